//! `vtpm-state`: operator commands on vTPM state directories (see `vtpm_state::cli`).

use std::process::ExitCode;

use clap::Parser;
use vtpm_state::cli::{run, StateArgs};

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
