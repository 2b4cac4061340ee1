//! `vtpm-migrate`: vhost-vtpm's migration controller, and the operator's and hosts'
//! commands for it (ADR 0010).
//!
//! The controller knows which host owns each vTPM and its epoch; it attests both hosts of a
//! move (a quote of each host TPM by its AIK over a fresh nonce and the host's migration
//! key, the AIK certificate from our CA and not revoked), issues the signed ticket, records
//! every step before acknowledging it, and commits the new owner by compare-and-set. The
//! package itself ([`migration`]) is sealed to the destination: the controller never sees
//! the vTPM in clear.
//!
//! | module | owns |
//! |---|---|
//! | [`controller`] | the decisions: state machine, tickets, commit, abort, recovery |
//! | [`store`] | the `ControllerStore` trait: registry, migrations, step log |
//! | [`sqlite`] | the SQLite store (default) |
//! | [`attest`] | checking a host's quote |
//! | [`auth`] | the operator's token, hosts' signed requests |
//! | [`server`] | the HTTPS service (axum over OpenSSL) |
//! | [`setup`] | the controller's directory (keys, certificates, token, config) |
//! | [`host`] | a host's attestation and credentials |
//! | [`offline`] | offline moves of a stopped vTPM: export, import, settle |
//! | [`cli`] | the command line |

pub mod attest;
pub mod auth;
pub mod cli;
pub mod controller;
pub mod host;
pub mod offline;
pub mod server;
pub mod setup;
pub mod sqlite;
pub mod store;
