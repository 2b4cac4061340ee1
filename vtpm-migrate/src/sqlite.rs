//! The controller's store in SQLite (the system library): one database file, WAL journal,
//! `synchronous=FULL`, so a transaction is on disk when its call returns and a crash at any
//! instant leaves every transaction done or not done.
//!
//! Tables: `instances` (instance, owner, epoch), `migrations` (one row per migration; a
//! partial unique index allows one non-final migration per instance), `steps` (the log).

use std::path::Path;

use migration::api::State;
use migration::MigrationId;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use vtpm_state::keys::InstanceId;

use crate::store::{ControllerStore, InstanceRecord, MigrationRecord, StepRecord, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    instance TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    final INTEGER NOT NULL,
    source_nonce BLOB NOT NULL,
    destination_nonce BLOB NOT NULL,
    source_attested INTEGER NOT NULL,
    destination_attested INTEGER NOT NULL,
    destination_key BLOB,
    ticket BLOB,
    package_sha256 BLOB,
    claim BLOB,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_migration
    ON migrations (instance) WHERE final = 0;
CREATE TABLE IF NOT EXISTS steps (
    migration TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    step TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_of ON steps (migration);
";

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(what.to_owned().into())
}

fn fixed<const N: usize>(v: Vec<u8>, what: &str) -> rusqlite::Result<[u8; N]> {
    v.try_into().map_err(|_| corrupt(what))
}

fn id16(text: String, what: &str) -> rusqlite::Result<[u8; 16]> {
    migration::ticket::parse_id16(&text).map_err(|_| corrupt(what))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn migration_from(row: &Row) -> rusqlite::Result<MigrationRecord> {
    let state: String = row.get("state")?;
    Ok(MigrationRecord {
        id: MigrationId(id16(row.get("id")?, "migration id")?),
        instance: InstanceId(id16(row.get("instance")?, "instance id")?),
        vm: row.get("vm")?,
        source: row.get("source")?,
        destination: row.get("destination")?,
        epoch: row.get::<_, i64>("epoch")? as u64,
        state: State::parse(&state).ok_or_else(|| corrupt("state"))?,
        source_nonce: fixed(row.get("source_nonce")?, "source nonce")?,
        destination_nonce: fixed(row.get("destination_nonce")?, "destination nonce")?,
        source_attested: row.get("source_attested")?,
        destination_attested: row.get("destination_attested")?,
        destination_key: row.get("destination_key")?,
        ticket: row.get("ticket")?,
        package_sha256: row
            .get::<_, Option<Vec<u8>>>("package_sha256")?
            .map(|v| fixed(v, "package digest"))
            .transpose()?,
        claim: row
            .get::<_, Option<Vec<u8>>>("claim")?
            .map(|v| fixed(v, "claim"))
            .transpose()?,
        created_at: row.get::<_, i64>("created_at")? as u64,
        expires_at: row.get::<_, i64>("expires_at")? as u64,
    })
}

fn insert_step(
    tx: &rusqlite::Transaction<'_>,
    id: &MigrationId,
    step: &StepRecord,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO steps (migration, step, at_ms, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id.to_string(), step.step, to_i64(step.at_ms), step.detail],
    )?;
    Ok(())
}

/// Writes every column of `m` but its id.
fn update_row(
    tx: &rusqlite::Transaction<'_>,
    m: &MigrationRecord,
    expected: State,
) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE migrations SET state = ?1, final = ?2, source_attested = ?3,
            destination_attested = ?4, destination_key = ?5, ticket = ?6, package_sha256 = ?7,
            claim = ?8, expires_at = ?9
         WHERE id = ?10 AND state = ?11",
        params![
            m.state.as_str(),
            m.state.is_final(),
            m.source_attested,
            m.destination_attested,
            m.destination_key,
            m.ticket,
            m.package_sha256.map(|d| d.to_vec()),
            m.claim.map(|c| c.to_vec()),
            to_i64(m.expires_at),
            m.id.to_string(),
            expected.as_str(),
        ],
    )
}

impl SqliteStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(SqliteStore { conn })
    }

    fn transaction(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)
    }
}

impl ControllerStore for SqliteStore {
    fn register_instance(&mut self, r: &InstanceRecord) -> Result<(), StoreError> {
        let tx = self.transaction()?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO instances (instance, owner, epoch) VALUES (?1, ?2, ?3)",
                params![r.instance.to_string(), r.owner, to_i64(r.epoch)],
            )
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::InstanceExists(r.instance));
        }
        tx.commit().map_err(backend)
    }

    fn instance(&self, instance: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT owner, epoch FROM instances WHERE instance = ?1",
                params![instance.to_string()],
                |row| {
                    Ok(InstanceRecord {
                        instance: *instance,
                        owner: row.get(0)?,
                        epoch: row.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()
            .map_err(backend)
    }

    fn migration(&self, id: &MigrationId) -> Result<Option<MigrationRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT * FROM migrations WHERE id = ?1",
                params![id.to_string()],
                migration_from,
            )
            .optional()
            .map_err(backend)
    }

    fn active_migration(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<MigrationRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT * FROM migrations WHERE instance = ?1 AND final = 0",
                params![instance.to_string()],
                migration_from,
            )
            .optional()
            .map_err(backend)
    }

    fn migrations(&self, active_only: bool) -> Result<Vec<MigrationRecord>, StoreError> {
        let sql = if active_only {
            "SELECT * FROM migrations WHERE final = 0 ORDER BY created_at, rowid"
        } else {
            "SELECT * FROM migrations ORDER BY created_at, rowid"
        };
        let mut stmt = self.conn.prepare(sql).map_err(backend)?;
        let rows = stmt.query_map([], migration_from).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn steps(&self, id: &MigrationId) -> Result<Vec<StepRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, at_ms, detail FROM steps WHERE migration = ?1 ORDER BY seq")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![id.to_string()], |row| {
                Ok(StepRecord {
                    step: row.get(0)?,
                    at_ms: row.get::<_, i64>(1)? as u64,
                    detail: row.get(2)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn insert_migration(
        &mut self,
        m: &MigrationRecord,
        step: &StepRecord,
    ) -> Result<(), StoreError> {
        let tx = self.transaction()?;
        let busy: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM migrations WHERE instance = ?1 AND final = 0)",
                params![m.instance.to_string()],
                |row| row.get(0),
            )
            .map_err(backend)?;
        if busy {
            return Err(StoreError::MigrationInProgress(m.instance));
        }
        tx.execute(
            "INSERT INTO migrations (id, instance, vm, source, destination, epoch, state, final,
                source_nonce, destination_nonce, source_attested, destination_attested,
                destination_key, ticket, package_sha256, claim, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                m.id.to_string(),
                m.instance.to_string(),
                m.vm,
                m.source,
                m.destination,
                to_i64(m.epoch),
                m.state.as_str(),
                m.state.is_final(),
                m.source_nonce.to_vec(),
                m.destination_nonce.to_vec(),
                m.source_attested,
                m.destination_attested,
                m.destination_key,
                m.ticket,
                m.package_sha256.map(|d| d.to_vec()),
                m.claim.map(|c| c.to_vec()),
                to_i64(m.created_at),
                to_i64(m.expires_at),
            ],
        )
        .map_err(backend)?;
        insert_step(&tx, &m.id, step).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn update_migration(
        &mut self,
        m: &MigrationRecord,
        expected: State,
        steps: &[StepRecord],
    ) -> Result<bool, StoreError> {
        let tx = self.transaction()?;
        if update_row(&tx, m, expected).map_err(backend)? != 1 {
            return Ok(false);
        }
        for step in steps {
            insert_step(&tx, &m.id, step).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn commit(
        &mut self,
        m: &MigrationRecord,
        expected: State,
        step: &StepRecord,
    ) -> Result<bool, StoreError> {
        let tx = self.transaction()?;
        let moved = tx
            .execute(
                "UPDATE instances SET owner = ?1, epoch = ?2
                 WHERE instance = ?3 AND owner = ?4 AND epoch = ?5",
                params![
                    m.destination,
                    to_i64(m.epoch + 1),
                    m.instance.to_string(),
                    m.source,
                    to_i64(m.epoch),
                ],
            )
            .map_err(backend)?;
        if moved != 1 || update_row(&tx, m, expected).map_err(backend)? != 1 {
            return Ok(false);
        }
        insert_step(&tx, &m.id, step).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(instance: InstanceId) -> MigrationRecord {
        MigrationRecord {
            id: MigrationId::random().unwrap(),
            instance,
            vm: "vm".into(),
            source: "a".into(),
            destination: "b".into(),
            epoch: 0,
            state: State::Requested,
            source_nonce: [1; 32],
            destination_nonce: [2; 32],
            source_attested: false,
            destination_attested: false,
            destination_key: None,
            ticket: None,
            package_sha256: None,
            claim: None,
            created_at: 10,
            expires_at: 20,
        }
    }

    fn step(name: &str) -> StepRecord {
        StepRecord {
            step: name.into(),
            at_ms: 1,
            detail: String::new(),
        }
    }

    #[test]
    fn migrations_move_by_compare_and_set_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let inst = InstanceId([5; 16]);
        let mut s = SqliteStore::open(&path).unwrap();
        s.register_instance(&InstanceRecord {
            instance: inst,
            owner: "a".into(),
            epoch: 0,
        })
        .unwrap();
        assert!(matches!(
            s.register_instance(&InstanceRecord {
                instance: inst,
                owner: "x".into(),
                epoch: 9
            }),
            Err(StoreError::InstanceExists(_))
        ));
        let mut m = record(inst);
        s.insert_migration(&m, &step("requested")).unwrap();
        assert!(matches!(
            s.insert_migration(&record(inst), &step("requested")),
            Err(StoreError::MigrationInProgress(_))
        ));
        m.state = State::Imported;
        m.package_sha256 = Some([9; 32]);
        m.claim = Some([8; 16]);
        assert!(s
            .update_migration(&m, State::Requested, &[step("x"), step("y")])
            .unwrap());
        // A second writer that read the old state loses.
        assert!(!s.update_migration(&m, State::Requested, &[]).unwrap());
        m.state = State::Committed;
        assert!(s.commit(&m, State::Imported, &step("committed")).unwrap());
        assert!(!s.commit(&m, State::Imported, &step("committed")).unwrap());
        drop(s);

        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.migration(&m.id).unwrap().unwrap(), m);
        let i = s.instance(&inst).unwrap().unwrap();
        assert_eq!((i.owner.as_str(), i.epoch), ("b", 1));
        let steps: Vec<String> = s
            .steps(&m.id)
            .unwrap()
            .into_iter()
            .map(|s| s.step)
            .collect();
        assert_eq!(steps, ["requested", "x", "y", "committed"]);
        assert!(s.active_migration(&inst).unwrap().is_none());
        assert_eq!(s.migrations(false).unwrap().len(), 1);
        assert!(s.migrations(true).unwrap().is_empty());
    }

    #[test]
    fn a_commit_whose_owner_moved_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let inst = InstanceId([6; 16]);
        s.register_instance(&InstanceRecord {
            instance: inst,
            owner: "someone-else".into(),
            epoch: 0,
        })
        .unwrap();
        let mut m = record(inst);
        m.state = State::Imported;
        s.insert_migration(&m, &step("requested")).unwrap();
        m.state = State::Committed;
        assert!(!s.commit(&m, State::Imported, &step("committed")).unwrap());
        assert_eq!(s.migration(&m.id).unwrap().unwrap().state, State::Imported);
        assert_eq!(s.instance(&inst).unwrap().unwrap().owner, "someone-else");
    }
}
