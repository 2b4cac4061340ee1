//! `vtpm-verify`: everything lives in the library; this is argument parsing and the exit
//! code (0: accepted, 1: refused, 2: usage or set-up error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = vtpm_verify::cli::Args::parse();
    match vtpm_verify::cli::run(args, &mut std::io::stdout()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vtpm-verify: {e}");
            ExitCode::from(2)
        }
    }
}
