//! Talks to a running vhost-vtpm daemon through the harness and prints what the TPM says.
//!
//! `cargo run --release -p guest-driver --example harness_demo -- /path/to/vtpm.sock`

use std::path::PathBuf;

use guest_driver::{ClientOptions, VtpmClient};
use tpm_proto::commands as c;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: harness_demo <vhost-user socket>")?
        .into();
    let mut tpm = VtpmClient::connect(&socket, ClientOptions::default())?;
    println!(
        "connected; device max buffer {} bytes",
        tpm.max_buffer_size()?
    );
    let rc = tpm_proto::response_code(&tpm.transact_tss(&c::startup(c::TPM_SU_CLEAR))?)?;
    println!("TPM2_Startup(CLEAR): rc {rc:#x}");
    let rnd = c::parse_get_random(&tpm.transact_tss(&c::get_random(16))?)?;
    println!("TPM2_GetRandom(16): {}", hex(&rnd));
    tpm.transact_tss(&c::pcr_extend_sha256(16, &[0xab; 32]))?;
    let pcr = c::parse_pcr_read_single(&tpm.transact_tss(&c::pcr_read_sha256(16))?)?;
    println!("PCR16 (sha256) after one extend: {}", hex(&pcr));
    let key = c::parse_create_primary_ecc(&tpm.transact_tss(&c::create_primary_ecc_signing())?)?;
    println!(
        "ECC P-256 primary: handle {:#x}, x {}",
        key.handle,
        hex(&key.x)
    );
    let (r, s) =
        c::parse_sign_ecdsa(&tpm.transact_tss(&c::sign_ecdsa_sha256(key.handle, &[1; 32]))?)?;
    println!("ECDSA signature: r {} s {}", hex(&r), hex(&s));
    tpm.transact_tss(&c::flush_context(key.handle))?;
    Ok(())
}
