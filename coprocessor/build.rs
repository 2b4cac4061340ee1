//! Links the system libtpms (Debian: libtpms-dev). Failing here with a clear message beats a
//! wall of undefined-symbol errors from the linker.

fn main() {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .any(|dir| std::path::Path::new(dir).join("libtpms.so").exists());
    if !found {
        println!("cargo:warning=libtpms.so not found; install libtpms-dev (scripts/setup.sh does)");
    }
    println!("cargo:rustc-link-lib=dylib=tpms");
    println!("cargo:rerun-if-changed=build.rs");
}
