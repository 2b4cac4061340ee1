//! `vtpm-host`: see the `host_agent` library.

use std::process::ExitCode;

use clap::Parser;
use vtpm_host::cli::{run, HostArgs};

fn main() -> ExitCode {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .init();
    match run(HostArgs::parse()) {
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
