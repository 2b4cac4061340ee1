//! `vtpm-host`: see the `host_agent` library.

use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use vtpm_host::cli::{run, HostArgs};

fn main() -> ExitCode {
    let args = HostArgs::parse();
    let mut logger = env_logger::Builder::new();
    if std::env::var_os("RUST_LOG").is_some() {
        logger.parse_default_env();
    } else {
        // tss-esapi logs "Closing context." at info each time a TPM context is dropped, a
        // line per command that tells an operator nothing: keep it (and its other info
        // messages) for debug and trace, and its warnings and errors always.
        let tss_esapi = if args.log_level >= LevelFilter::Debug {
            args.log_level
        } else {
            args.log_level.min(LevelFilter::Warn)
        };
        logger
            .filter_level(args.log_level)
            .filter_module("tss_esapi", tss_esapi);
    }
    logger.init();
    match run(args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vtpm-host: {e}");
            ExitCode::FAILURE
        }
    }
}
