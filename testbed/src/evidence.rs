//! A deep-attestation evidence bundle (`vtpm-verify`'s format, vtpm-verify/README.md)
//! collected with raw TPM commands, as the guest tool `vtpm-evidence` collects it with
//! tpm2-tools: for tests and benchmarks that drive a daemon through the guest-driver harness.

use base64::Engine as _;
use serde_json::{json, Value};
use tpm_proto::attest;
use tpm_proto::commands as c;
use tpm_proto::public::alg;
use tpm_proto::vendor::DeepQuoteRequest;

/// Sends one command, returns the response.
pub type Transact<'a> = dyn FnMut(&[u8]) -> Vec<u8> + 'a;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The whole NV index `index`, read with its own authorization; `None` if it is not defined.
pub fn nv_read_all(t: &mut Transact<'_>, index: u32) -> Option<Vec<u8>> {
    let public = c::parse_nv_read_public(&t(&c::nv_read_public(index))).ok()?;
    let mut data = Vec::new();
    while data.len() < usize::from(public.data_size) {
        let n = (usize::from(public.data_size) - data.len()).min(c::MAX_NV_BUFFER) as u16;
        let chunk = c::parse_nv_read(&t(&c::nv_read(index, n, data.len() as u16))).ok()?;
        if chunk.is_empty() {
            return None;
        }
        data.extend(chunk);
    }
    Some(data)
}

/// A quote as `tpm2_quote -m -s -o -F values` writes it: the TPMS_ATTEST, the
/// TPMT_SIGNATURE, the quoted values (concatenated, ascending).
#[derive(Debug, Clone)]
pub struct QuoteFiles {
    pub attest: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcr_values: Vec<u8>,
}

/// A quote by `ak` over the SHA-256 `pcrs` with `nonce`, and the quoted values.
pub fn vtpm_quote(
    t: &mut Transact<'_>,
    ak: u32,
    nonce: &[u8],
    pcrs: &[u8],
) -> Result<QuoteFiles, String> {
    let (attest, signature) = attest::parse_quote(&t(&attest::quote(ak, nonce, pcrs)))
        .map_err(|e| format!("Quote: {e}"))?;
    let mut values = Vec::new();
    let mut sorted = pcrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for chunk in sorted.chunks(attest::PCR_READ_MAX) {
        let read = attest::parse_pcr_read(&t(&attest::pcr_read_sha256(chunk)))
            .map_err(|e| format!("PCR_Read: {e}"))?;
        values.extend(read.into_iter().flat_map(|(_, v)| v));
    }
    Ok(QuoteFiles {
        attest,
        signature,
        pcr_values: values,
    })
}

/// The deep quote's whole response for `nonce`, bound to the RSA vEK. Asked again after a
/// pause while the daemon's rate limit answers TPM_RC_RETRY, as the guest kernel does.
pub fn deep_quote(t: &mut Transact<'_>, nonce: &[u8]) -> Vec<u8> {
    let cmd = DeepQuoteRequest {
        nonce: nonce.to_vec(),
        vek_type: alg::RSA,
    }
    .build();
    let mut resp = t(&cmd);
    for _ in 0..40 {
        if tpm_proto::response_code(&resp) != Ok(tpm_proto::rc::RETRY) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        resp = t(&cmd);
    }
    resp
}

/// A whole bundle for `nonce` (hex): the quote by `ak` (whose certificate is `vaik_cert`)
/// over `pcrs`, the deep quote, the vEK certificates and their chain from NV.
pub fn collect(
    t: &mut Transact<'_>,
    nonce_hex: &str,
    ak: u32,
    vaik_cert: &[u8],
    pcrs: &[u8],
) -> Result<Value, String> {
    let nonce = hex_decode(nonce_hex)?;
    let quote = vtpm_quote(t, ak, &nonce, pcrs)?;
    let deep = deep_quote(t, &nonce);
    let veks: Vec<String> = [c::RSA_EK_CERT_INDEX, c::ECC_EK_CERT_INDEX]
        .iter()
        .filter_map(|&i| nv_read_all(t, i))
        .map(|d| b64(&d))
        .collect();
    let chain: Vec<String> = (0..16)
        .map_while(|i| nv_read_all(t, 0x01c0_0100 + i))
        .map(|d| b64(&d))
        .collect();
    Ok(json!({
        "version": 1,
        "nonce": nonce_hex,
        "vtpm_quote": {
            "attest": b64(&quote.attest),
            "signature": b64(&quote.signature),
            "pcr_values": b64(&quote.pcr_values),
        },
        "vaik_certificate": b64(vaik_cert),
        "vek_certificates": veks,
        "vek_chain": chain,
        "deep_quote": b64(&deep),
    }))
}

fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("not hex: {text:?}"))
        })
        .collect()
}

/// Replaces a base64 field of a bundle (`["deep_quote"]`, `["vtpm_quote", "attest"]`, ...).
pub fn set_bytes(bundle: &mut Value, path: &[&str], data: &[u8]) {
    let mut v = bundle;
    for key in path {
        v = &mut v[*key];
    }
    *v = Value::String(b64(data));
}

/// A base64 field of a bundle, decoded.
pub fn get_bytes(bundle: &Value, path: &[&str]) -> Vec<u8> {
    let mut v = bundle;
    for key in path {
        v = &v[*key];
    }
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap_or_default()
}
