//! `vtpm-state`: operator commands on vTPM state directories (see `vhost_vtpm::statectl`).

use std::process::ExitCode;

use clap::Parser;
use vhost_vtpm::statectl::{run, StateArgs};

fn main() -> ExitCode {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .init();
    match run(StateArgs::parse()) {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vtpm-state: {e}");
            ExitCode::FAILURE
        }
    }
}
