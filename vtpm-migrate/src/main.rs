//! `vtpm-migrate`: see the crate documentation and README.md.

use clap::Parser;

fn main() {
    let cli = vtpm_migrate::cli::Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    if let Err(e) = vtpm_migrate::cli::run(cli) {
        eprintln!("vtpm-migrate: {}", e.0);
        std::process::exit(1);
    }
}
