//! `vtpm-ca`: the local CA's command line (see `vtpm_ca::cli`).

use std::process::ExitCode;

use clap::Parser;
use vtpm_ca::cli::{run, Args, CliError, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .parse_default_env()
        .init();
    let cmd = match Command::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vtpm-ca: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout();
    match run(cmd, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ CliError::Usage(_)) => {
            eprintln!("vtpm-ca: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("vtpm-ca: {e}");
            ExitCode::FAILURE
        }
    }
}
