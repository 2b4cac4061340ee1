//! The platform firmware of the daemon (docs/adr/0011), driven through a real vhost-user
//! connection by the guest-driver harness: a real daemon, swtpm as the host TPM (its PCRs
//! 0-7 extended with known values first), the host enrolled with the local CA and the vTPM
//! provisioned with its vEK certificates. What a guest needs for none of it: the Startup
//! hook (mirroring, platform lock) whoever sends the Startup, the mirrored-PCR guard, the
//! capability patching the Linux resource manager relies on, the deep quote, hostile command
//! bytes, clean and unclean restarts.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use guest_driver::VtpmClient;
use host_tpm::HostTpm;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::sha::sha256;
use openssl::x509::X509;
use testbed::{ChainSetup, MirrorArgs};
use tpm_proto::attest::{pcr_digest_sha256, QuoteAttest, Signature};
use tpm_proto::commands::{self as c, pt, TPM_CAP_COMMANDS, TPM_CAP_TPM_PROPERTIES};
use tpm_proto::public::{alg, PublicParams, TpmPublic};
use tpm_proto::vendor::{
    qualifying_data, DeepQuoteRequest, DeepQuoteResponse, CC_DEEP_QUOTE, DEEP_QUOTE_TPMA_CC,
};
use tpm_proto::{rc, CommandBuilder};

const MIRRORED: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// SHA-256(a || b).
fn extend(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    sha256(&[a.as_slice(), b].concat())
}

/// The host: a manufactured host TPM whose PCRs 0-7 hold known values, enrolled with the
/// local CA, its coprocessor certified.
struct Host {
    chain: ChainSetup,
    tcti: String,
}

impl Host {
    fn start(dir: &Path) -> Host {
        let bin_dir = Path::new(DAEMON).parent().unwrap();
        let chain = ChainSetup::start(bin_dir, dir, "platform-host").expect("host enrolled");
        let tcti = chain.host_tpm.tcti();
        let host = Host { chain, tcti };
        for pcr in MIRRORED {
            host.extend_pcr(
                pcr,
                &sha256(format!("host firmware stage {pcr}").as_bytes()),
            );
        }
        host
    }

    fn extend_pcr(&self, pcr: u8, digest: &[u8; 32]) {
        HostTpm::connect(&self.tcti)
            .unwrap()
            .pcr_extend_sha256(pcr, *digest)
            .unwrap();
    }

    fn pcrs(&self) -> Vec<[u8; 32]> {
        HostTpm::connect(&self.tcti)
            .unwrap()
            .read_pcrs_sha256(&MIRRORED)
            .unwrap()
    }

    /// What each mirrored vPCR must hold: SHA-256(0^32 || hostPCR).
    fn mirror(&self) -> Vec<[u8; 32]> {
        self.pcrs().iter().map(|v| extend(&[0; 32], v)).collect()
    }

    fn daemon(&self, dir: &Path, extra: &[&str]) -> Daemon {
        let mirror = MirrorArgs::new(&self.tcti, &self.chain.host_dir);
        let args = [&mirror.args()[..], extra].concat();
        std::fs::create_dir_all(dir).unwrap();
        Daemon::start_in(dir, &args)
    }

    fn pem_der(&self, name: &str) -> Vec<u8> {
        X509::from_pem(self.chain.host_pem(name).unwrap().as_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    }
}

fn vpcrs(client: &mut VtpmClient) -> Vec<[u8; 32]> {
    MIRRORED
        .iter()
        .map(|&p| pcr_read(client, u32::from(p)).try_into().unwrap())
        .collect()
}

/// Every way a guest could use the platform hierarchy with the empty password fails, and
/// the vEK certificate stays as it was.
fn assert_platform_closed(client: &mut VtpmClient, vek_cert: &[u8]) {
    let attempts = [
        (
            "NV_UndefineSpace",
            c::nv_undefine_space_with_auth(c::TPM_RH_PLATFORM, c::RSA_EK_CERT_INDEX),
        ),
        (
            "NV_Write",
            c::nv_write_with_auth(c::TPM_RH_PLATFORM, c::RSA_EK_CERT_INDEX, 0, b"forged"),
        ),
        (
            "HierarchyControl",
            c::hierarchy_control(c::TPM_RH_PLATFORM, &[], c::TPM_RH_ENDORSEMENT, false),
        ),
        (
            "HierarchyChangeAuth",
            c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], b"mine now"),
        ),
    ];
    for (what, cmd) in attempts {
        let code = rc_of(&run(client, &cmd));
        assert!(
            matches!(
                rc::base(code),
                rc::fmt1::BAD_AUTH | rc::fmt1::AUTH_FAIL | rc::fmt1::HIERARCHY
            ),
            "{what} with the platform hierarchy answered {code:#x}"
        );
    }
    assert_eq!(nv_read_all(client, c::RSA_EK_CERT_INDEX), vek_cert);
}

fn deep_quote(client: &mut VtpmClient, nonce: &[u8], vek_type: u16) -> Vec<u8> {
    let cmd = DeepQuoteRequest {
        nonce: nonce.to_vec(),
        vek_type,
    }
    .build();
    client.transact(&cmd).unwrap()
}

/// Checks a deep quote as a verifier would, against the host's own files: the host AIK
/// signed it, it binds `nonce` to the vEK of `vek_cert`, it covers PCRs 0-7 with `values`.
fn check_deep_quote(host: &Host, resp: &[u8], nonce: &[u8], vek_cert: &[u8], values: &[[u8; 32]]) {
    let dq = DeepQuoteResponse::parse(resp).expect("a deep quote");
    assert_eq!(
        dq.host_certificates,
        vec![host.pem_der("host-aik.pem"), host.pem_der("host-ek.pem")]
    );
    let aik_cert = X509::from_der(&dq.host_certificates[0]).unwrap();
    let Signature::Ecdsa { r, s, .. } = Signature::parse(&dq.host_signature).unwrap() else {
        panic!("the host AIK signs with ECDSA")
    };
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&r).unwrap(),
        BigNum::from_slice(&s).unwrap(),
    )
    .unwrap();
    let key = aik_cert.public_key().unwrap().ec_key().unwrap();
    assert!(
        sig.verify(&sha256(&dq.host_attest), &key).unwrap(),
        "the host AIK signed the quote"
    );
    let attest = QuoteAttest::parse(&dq.host_attest).unwrap();
    let public = TpmPublic::parse(&dq.vek_public).unwrap();
    assert_eq!(
        attest.extra_data,
        qualifying_data(nonce, &public.name().unwrap()),
        "bound to the nonce and the vEK's name"
    );
    // The public area is the certified vEK's.
    let cert_key = X509::from_der(vek_cert).unwrap().public_key().unwrap();
    match public.params {
        PublicParams::Rsa { modulus, .. } => {
            assert_eq!(modulus, cert_key.rsa().unwrap().n().to_vec())
        }
        other => panic!("not the RSA vEK: {other:?}"),
    }
    assert_eq!(attest.quote.sha256_pcrs().unwrap(), MIRRORED);
    assert_eq!(dq.host_pcr_values, values);
    assert_eq!(attest.quote.pcr_digest, pcr_digest_sha256(values));
}

#[test]
fn the_daemon_plays_the_platform_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let vm = dir.path().join("vm");
    host.chain.provision(&vm.join("state")).expect("provision");
    let mut d = host.daemon(&vm, &[]);
    let mut client = d.connect();

    // --- Startup by the guest: mirrored, locked ---
    assert_success(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)), "Startup");
    let mirror = host.mirror();
    assert_eq!(
        vpcrs(&mut client),
        mirror,
        "vPCR[i] = SHA-256(0^32 || hostPCR[i])"
    );
    assert_eq!(
        pcr_read(&mut client, 8),
        vec![0u8; 32],
        "PCR 8 is not mirrored"
    );
    let vek_cert = nv_read_all(&mut client, c::RSA_EK_CERT_INDEX);
    assert_platform_closed(&mut client, &vek_cert);

    // --- the guard: mirrored PCRs neither extend nor reset, others do ---
    for pcr in MIRRORED {
        let pcr = u32::from(pcr);
        for cmd in [
            c::pcr_extend_sha256(pcr, &[0xee; 32]),
            c::pcr_event(pcr, b"guest event"),
            c::pcr_reset(pcr),
        ] {
            assert_eq!(rc_of(&run(&mut client, &cmd)), rc::LOCALITY, "PCR {pcr}");
        }
    }
    assert_eq!(vpcrs(&mut client), mirror, "unchanged after the refusals");
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(16, &[0xee; 32])),
        "PCR_Extend 16",
    );
    assert_eq!(
        pcr_read(&mut client, 16),
        extend(&[0; 32], &[0xee; 32]).to_vec()
    );
    assert_success(&run(&mut client, &c::pcr_reset(16)), "PCR_Reset 16");

    // --- what the Linux resource manager reads at probe: the deep quote is listed ---
    let props = c::parse_tpm_properties(&run(
        &mut client,
        &c::get_capability(TPM_CAP_TPM_PROPERTIES, pt::TOTAL_COMMANDS, 3),
    ))
    .unwrap();
    let total = props[0];
    assert_eq!(total.0, pt::TOTAL_COMMANDS);
    assert_eq!(props[2], (pt::VENDOR_COMMANDS, 1));
    let resp = run(
        &mut client,
        &c::get_capability(TPM_CAP_COMMANDS, 0x11f, total.1),
    );
    let mut r = tpm_proto::ResponseReader::success(&resp).unwrap();
    let _more = r.u8().unwrap();
    assert_eq!(r.u32().unwrap(), TPM_CAP_COMMANDS);
    assert_eq!(
        r.u32().unwrap(),
        total.1,
        "exactly TPM_PT_TOTAL_COMMANDS entries"
    );
    let attrs: Vec<u32> = (0..total.1).map(|_| r.u32().unwrap()).collect();
    assert_eq!(attrs.last(), Some(&DEEP_QUOTE_TPMA_CC));
    assert!(attrs
        .windows(2)
        .all(|w| (w[0] & 0x2000_ffff) < (w[1] & 0x2000_ffff)));

    // --- the deep quote ---
    let nonce = sha256(b"verifier nonce 1");
    let resp = deep_quote(&mut client, &nonce, alg::RSA);
    check_deep_quote(&host, &resp, &nonce, &vek_cert, &host.pcrs());
    // Its refusals are answers.
    let mut sessions = DeepQuoteRequest {
        nonce: vec![1],
        vek_type: alg::RSA,
    }
    .build();
    sessions[1] = 0x02;
    for (cmd, code) in [
        (sessions, tpm_proto::vendor::RC_BAD_TAG),
        (
            DeepQuoteRequest {
                nonce: vec![0; 65],
                vek_type: alg::RSA,
            }
            .build(),
            tpm_proto::vendor::RC_NONCE_SIZE,
        ),
        (
            DeepQuoteRequest {
                nonce: vec![],
                vek_type: alg::SHA256,
            }
            .build(),
            tpm_proto::vendor::RC_VEK_TYPE,
        ),
        (
            CommandBuilder::no_sessions(CC_DEEP_QUOTE).u16(1).finish(),
            tpm_proto::vendor::RC_INSUFFICIENT,
        ),
    ] {
        assert_eq!(rc_of(&client.transact(&cmd).unwrap()), code);
    }

    // --- hostile command bytes: answered, never a crash, mirrored PCRs untouched ---
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for round in 0..300u32 {
        let codes = [
            0x182,
            0x13C,
            0x13D,
            0x183,
            0x185,
            0x12C,
            0x17A,
            0x144,
            CC_DEEP_QUOTE,
            0x2000_0000,
            0x0100_0182,
        ];
        let code = codes[(next() as usize) % codes.len()];
        let len = 10 + (next() as usize % 40);
        let mut cmd: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        cmd[0..2].copy_from_slice(&[0x80, if round % 2 == 0 { 0x01 } else { 0x02 }]);
        cmd[2..6].copy_from_slice(&(len as u32).to_be_bytes());
        cmd[6..10].copy_from_slice(&code.to_be_bytes());
        if len >= 14 && round % 3 == 0 {
            cmd[10..14].copy_from_slice(&(next() % 8).to_be_bytes());
        }
        let resp = client.transact(&cmd).expect("answered");
        assert!(tpm_proto::response_code(&resp).is_ok(), "{cmd:02x?}");
    }
    assert_eq!(
        vpcrs(&mut client),
        mirror,
        "mirror intact after hostile commands"
    );
    assert_platform_closed(&mut client, &vek_cert);

    // --- the host PCR moves: the mirror no longer matches a new host quote ---
    host.extend_pcr(4, &sha256(b"host changed after the vTPM started"));
    let nonce2 = sha256(b"verifier nonce 2");
    let resp = deep_quote(&mut client, &nonce2, alg::RSA);
    check_deep_quote(&host, &resp, &nonce2, &vek_cert, &host.pcrs());
    assert_ne!(vpcrs(&mut client), host.mirror());
    assert_eq!(vpcrs(&mut client), mirror);

    // --- a device reset (guest reboot) and the guest's Startup: mirrored anew ---
    client.reset_device().unwrap();
    assert_success(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)), "Startup");
    let mirror = host.mirror();
    assert_eq!(vpcrs(&mut client), mirror, "the new host value is mirrored");
    assert_platform_closed(&mut client, &vek_cert);
    drop(client);

    // --- clean stop: the state on disk has the platform hierarchy open for the host's
    // tools; the next start locks it before any guest command ---
    d.stop();
    host.chain
        .provision(&vm.join("state"))
        .expect("vtpm-host provision on the stopped instance");
    d.respawn();
    let mut client = d.connect();
    assert_eq!(vpcrs(&mut client), mirror, "resumed: the mirror as it was");
    let reissued = nv_read_all(&mut client, c::RSA_EK_CERT_INDEX);
    assert_ne!(reissued, vek_cert, "re-issued (new serial)");
    assert_platform_closed(&mut client, &reissued);
    let nonce3 = sha256(b"verifier nonce 3");
    let resp = deep_quote(&mut client, &nonce3, alg::RSA);
    check_deep_quote(&host, &resp, &nonce3, &reissued, &host.pcrs());
    drop(client);

    // --- SIGKILL: the daemon restarts the TPM itself, and the hook runs for that Startup ---
    host.extend_pcr(0, &sha256(b"host rebooted meanwhile"));
    d.kill();
    d.respawn();
    let mut client = d.connect();
    assert_eq!(vpcrs(&mut client), host.mirror(), "the mirror holds again");
    assert_platform_closed(&mut client, &reissued);
    assert!(d.log_text().contains("recovered from an unclean stop"));
    assert!(d
        .log_text()
        .contains("host PCRs [0, 1, 2, 3, 4, 5, 6, 7] mirrored"));
    // One guest cannot keep the shared host TPM busy: a burst, then TPM_RC_RETRY.
    let codes: Vec<u32> = (0..8)
        .map(|_| rc_of(&deep_quote(&mut client, &nonce3, alg::RSA)))
        .collect();
    assert!(codes[..5].iter().all(|&c| c == rc::SUCCESS), "{codes:x?}");
    assert!(codes.contains(&rc::RETRY), "{codes:x?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        rc_of(&deep_quote(&mut client, &nonce3, alg::RSA)),
        rc::SUCCESS
    );
    drop(client);
    d.stop();

    // --- an instance without vEK certificates has nothing to bind a deep quote to ---
    let bare = dir.path().join("bare");
    let d2 = host.daemon(&bare, &[]);
    let mut client = d2.connect();
    startup(&mut client);
    assert_eq!(
        rc_of(&deep_quote(&mut client, &nonce, alg::ECC)),
        rc::NV_UNINITIALIZED
    );
    assert_eq!(vpcrs(&mut client), host.mirror());
}

fn start_fails(dir: &Path, extra: &[&str]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["--log-level", "debug"];
    args.extend_from_slice(extra);
    match testbed::DaemonProcess::start(Path::new(DAEMON), dir, &args) {
        Ok(_) => panic!("the daemon started with {extra:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn without_a_host_tpm_nothing_is_mirrored_silently_and_the_platform_still_closes() {
    let dir = tempfile::tempdir().unwrap();
    // --mirror-pcrs needs the host TPM: a refusal, not a daemon without the mirror.
    let (code, stderr) = exit_of(
        std::process::Command::new(DAEMON)
            .args(["--socket-path", "/nonexistent/s", "--state-dir"])
            .arg(dir.path().join("s"))
            .args(["--host-key-file", "/nonexistent/k", "--mirror-pcrs", "0-7"]),
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--mirror-pcrs needs --host-tpm"),
        "{stderr}"
    );

    // No host TPM, no mirror: PCRs behave as on bare metal, the platform is closed anyway,
    // and the deep quote is neither offered nor answered.
    std::fs::create_dir_all(dir.path().join("plain")).unwrap();
    let d = Daemon::start_in(&dir.path().join("plain"), &[]);
    let mut client = d.connect();
    assert_success(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)), "Startup");
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(0, &[1; 32])),
        "PCR_Extend 0",
    );
    assert_eq!(
        rc::base(rc_of(&run(
            &mut client,
            &c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], b"x")
        ))),
        rc::fmt1::BAD_AUTH
    );
    assert_eq!(
        rc_of(&deep_quote(&mut client, &[1; 32], alg::RSA)),
        rc::COMMAND_CODE
    );
    let props = c::parse_tpm_properties(&run(
        &mut client,
        &c::get_capability(TPM_CAP_TPM_PROPERTIES, pt::VENDOR_COMMANDS, 1),
    ))
    .unwrap();
    assert_eq!(props, vec![(pt::VENDOR_COMMANDS, 0)]);
}

#[test]
fn a_host_dir_without_the_host_identity_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim = testbed::HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    let empty = dir.path().join("empty-host-dir");
    std::fs::create_dir(&empty).unwrap();
    let err = start_fails(
        &dir.path().join("vm"),
        &MirrorArgs::new(&sim.tcti(), &empty).args(),
    );
    let blob: PathBuf = empty.join("host-aik.blob");
    assert!(
        err.contains(&blob.display().to_string()) && err.contains("vtpm-host enroll"),
        "{err}"
    );
}

// Issue 11, item 9 (ADR 0012): a running instance's chain follows `vtpm-host renew` on
// SIGHUP, between two guest commands; its vEK certificates (same coprocessor key) stay.
#[test]
fn sighup_refreshes_the_chain_of_a_running_instance_after_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(DAEMON).parent().unwrap();
    // Certificates live 60 s (plus the CA's backdating): due for renewal at once.
    let chain = ChainSetup::start_with(
        bin_dir,
        &dir.path().join("host"),
        "refresh-host",
        &["--validity-secs", "60"],
    )
    .expect("host enrolled");
    let vm = dir.path().join("vm");
    chain.provision(&vm.join("state")).expect("provision");
    let tcti = chain.host_tpm.tcti();
    let host_dir = chain.host_dir.display().to_string();
    let d = Daemon::start_in(&vm, &["--host-tpm", &tcti, "--host-dir", &host_dir]);
    let mut client = d.connect();
    startup(&mut client);
    let der = |name: &str| {
        X509::from_pem(chain.host_pem(name).unwrap().as_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    };
    let in_nv = |client: &mut VtpmClient| {
        (
            nv_read_all(client, identity::provision::EK_CHAIN_FIRST_INDEX),
            nv_read_all(client, identity::provision::EK_CHAIN_FIRST_INDEX + 1),
        )
    };
    assert_eq!(
        in_nv(&mut client),
        (der("coprocessor.pem"), der("host-aik.pem"))
    );
    let vek = nv_read_all(&mut client, c::RSA_EK_CERT_INDEX);

    // Nothing renewed yet: SIGHUP finds the chain current.
    let hup = |d: &Daemon, needle: &str| {
        let before = d.log_text().matches(needle).count();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        assert!(
            wait_until(std::time::Duration::from_secs(10), || d
                .log_text()
                .matches(needle)
                .count()
                > before),
            "{}",
            d.log_text()
        );
    };
    hup(&d, "SIGHUP: certificate chain in NV already current");

    let token = chain.token_file().display().to_string();
    let mut renew = vec!["renew", "--host-id", "refresh-host", "--token-file", &token];
    let ca_args = chain.ca_args();
    renew.extend(ca_args.iter().map(String::as_str));
    let out = chain.host(&renew).unwrap();
    assert!(out.contains("renewed: host AIK certificate"), "{out}");
    let renewed = (der("coprocessor.pem"), der("host-aik.pem"));
    assert_ne!(in_nv(&mut client), renewed);

    hup(&d, "SIGHUP: certificate chain in NV refreshed");
    assert_eq!(in_nv(&mut client), renewed);
    // The vEK certificate stayed and verifies under the renewed coprocessor certificate.
    assert_eq!(nv_read_all(&mut client, c::RSA_EK_CERT_INDEX), vek);
    let coprocessor = X509::from_der(&renewed.0).unwrap();
    assert!(X509::from_der(&vek)
        .unwrap()
        .verify(&coprocessor.public_key().unwrap())
        .unwrap());
    // The guest's TPM served on, and the platform hierarchy is closed again.
    assert_success(&run(&mut client, &c::get_random(8)), "GetRandom");
    assert_platform_closed(&mut client, &vek);
}
