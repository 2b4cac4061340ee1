//! Links the system libtpms, found with pkg-config (Debian's libtpms-dev ships `libtpms.pc`).
//! Failing here with a clear message beats a wall of undefined-symbol errors from the linker.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Emits the link-search and link-lib lines (and rerun-if-env-changed for PKG_CONFIG_*).
    if let Err(e) = pkg_config::Config::new().probe("libtpms") {
        eprintln!(
            "coprocessor: libtpms not found with pkg-config; install libtpms-dev (scripts/setup.sh does)\n{e}"
        );
        std::process::exit(1);
    }
}
