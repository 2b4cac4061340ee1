//! `vhost-vtpm`: the vhost-user virtio TPM daemon. Everything lives in the library; this is
//! argument parsing, logging set-up and the exit code.

use std::process::ExitCode;

use clap::Parser;
use vhost_vtpm::config::{capabilities, Args, Config};
use vhost_vtpm::daemon;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_capabilities {
        println!("{:#}", capabilities());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::new()
        .filter_level(args.log_level)
        // tss-esapi logs every host TPM connection it closes at info level; the daemon
        // opens one per Startup hook and per deep quote.
        .filter_module("tss_esapi", args.log_level.min(log::LevelFilter::Warn))
        .format_timestamp_micros()
        .init();
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-vtpm: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("vhost-vtpm: {e}");
            ExitCode::FAILURE
        }
    }
}
