//! Raw TPM commands over a TCTI, for what tss-esapi 7.7 does not wrap (the hash-sequence
//! commands TPM2_HashSequenceStart / SequenceUpdate / SequenceComplete). Commands are built
//! and responses parsed with `tpm-proto`; this module only moves bytes, through the same
//! TCTI loader (`libtss2-tctildr`) and configuration string tss-esapi uses.

use std::ffi::CString;
use std::ptr::null_mut;

use tpm_proto::rc;
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::{
    Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize, TSS2_TCTI_CONTEXT, TSS2_TCTI_CONTEXT_COMMON_V1,
    TSS2_TCTI_TIMEOUT_BLOCK,
};
use tss_esapi::WrapperErrorKind;

/// Largest response read back (TPM2_MAX_RESPONSE_SIZE of the TPMs this project targets is
/// 4096; the slack costs nothing).
const MAX_RESPONSE: usize = 8192;

/// How often a command is sent that the TPM keeps answering RETRY, YIELDED or TESTING.
const RETRIES: usize = 10;

fn tss_error(rc: u32) -> tss_esapi::Error {
    tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
}

/// A TCTI connection owned by this crate (finalised on drop).
pub(crate) struct RawTcti {
    ctx: *mut TSS2_TCTI_CONTEXT,
}

impl RawTcti {
    /// Opens a TCTI connection from a tpm2-tss configuration string.
    pub(crate) fn open(conf: TctiNameConf) -> Result<Self, tss_esapi::Error> {
        let conf = CString::try_from(conf)?;
        let mut ctx = null_mut();
        // SAFETY: `conf` is a NUL-terminated string that outlives the call and `ctx` is a
        // valid location for the out-pointer; the loader does not keep either.
        let rc = unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut ctx) };
        if rc != 0 {
            return Err(tss_error(rc));
        }
        if ctx.is_null() {
            return Err(tss_esapi::Error::WrapperError(
                WrapperErrorKind::InternalError,
            ));
        }
        Ok(RawTcti { ctx })
    }

    /// Sends one command and returns the TPM's complete response, whatever its response
    /// code (the caller parses it), after retrying while the TPM answers RETRY, YIELDED or
    /// TESTING. Transport failures are TSS response codes.
    pub(crate) fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, tss_esapi::Error> {
        let mut attempt = 0;
        loop {
            let resp = self.transact(command)?;
            let code = tpm_proto::response_code(&resp).unwrap_or(rc::SUCCESS);
            attempt += 1;
            if !matches!(code, rc::RETRY | rc::YIELDED | rc::TESTING) || attempt >= RETRIES {
                return Ok(resp);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, tss_esapi::Error> {
        // SAFETY: `self.ctx` came from a successful Tss2_TctiLdr_Initialize and stays valid
        // until drop. Every TCTI context (the loader's included) begins with the common
        // version-1 header, which is what Tss2_Tcti_Transmit/Receive read too.
        let common = unsafe { &*(self.ctx as *const TSS2_TCTI_CONTEXT_COMMON_V1) };
        let (Some(transmit), Some(receive)) = (common.transmit, common.receive) else {
            return Err(tss_esapi::Error::WrapperError(
                WrapperErrorKind::InternalError,
            ));
        };
        if common.version < 1 {
            return Err(tss_esapi::Error::WrapperError(
                WrapperErrorKind::InternalError,
            ));
        }
        // SAFETY: the context is valid (above); `command` is readable for its length, which
        // is what the TCTI reads.
        let rc = unsafe { transmit(self.ctx, command.len() as _, command.as_ptr()) };
        if rc != 0 {
            return Err(tss_error(rc));
        }
        let mut buf = vec![0u8; MAX_RESPONSE];
        let mut size = buf.len() as _;
        // SAFETY: the context is valid; `buf` is writable for `size` bytes, the capacity the
        // TCTI is told, and it writes the response length back into `size`.
        let rc = unsafe {
            receive(
                self.ctx,
                &mut size,
                buf.as_mut_ptr(),
                TSS2_TCTI_TIMEOUT_BLOCK,
            )
        };
        if rc != 0 {
            return Err(tss_error(rc));
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > buf.len() {
            return Err(tss_esapi::Error::WrapperError(
                WrapperErrorKind::WrongValueFromTpm,
            ));
        }
        buf.truncate(size);
        Ok(buf)
    }
}

impl Drop for RawTcti {
    fn drop(&mut self) {
        // SAFETY: `self.ctx` came from Tss2_TctiLdr_Initialize and is finalised once, here;
        // the loader nulls the pointer.
        unsafe { Tss2_TctiLdr_Finalize(&mut self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    //! The raw path and `tpm-proto`'s builders against swtpm, including the builders other
    //! crates use on the vTPM (platform-authorised EK certificate indices, CreatePrimary).

    use std::str::FromStr;

    use testbed::HostTpmSimulator;
    use tpm_proto::commands::*;
    use tpm_proto::ResponseReader;
    use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
    use tss_esapi::interface_types::key_bits::RsaKeyBits;
    use tss_esapi::structures::Public;
    use tss_esapi::traits::{Marshall, UnMarshall};

    use super::*;

    fn ok(raw: &mut RawTcti, command: &[u8]) -> Vec<u8> {
        let resp = raw.execute(command).unwrap();
        ResponseReader::success(&resp).unwrap();
        resp
    }

    #[test]
    fn platform_ek_certificate_index_and_create_primary() {
        let dir = tempfile::tempdir().unwrap();
        let tpm = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
        let mut raw = RawTcti::open(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();

        let index = RSA_EK_CERT_INDEX;
        let cert: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        ok(
            &mut raw,
            &nv_define_space_with_auth(TPM_RH_PLATFORM, index, 1500, NV_EK_CERT_ATTRS),
        );
        // The owner may not write a PPWRITE index; the platform may, in chunks.
        let resp = raw
            .execute(&nv_write_with_auth(TPM_RH_OWNER, index, 0, &cert[..10]))
            .unwrap();
        assert_ne!(tpm_proto::response_code(&resp).unwrap(), 0);
        for (n, chunk) in cert.chunks(MAX_NV_BUFFER).enumerate() {
            let offset = (n * MAX_NV_BUFFER) as u16;
            ok(
                &mut raw,
                &nv_write_with_auth(TPM_RH_PLATFORM, index, offset, chunk),
            );
        }
        let mut read = Vec::new();
        for offset in [0u16, 1000] {
            let size = if offset == 0 { 1000 } else { 500 };
            read.extend(parse_nv_read(&ok(&mut raw, &nv_read(index, size, offset))).unwrap());
        }
        assert_eq!(read, cert);
        ok(
            &mut raw,
            &nv_undefine_space_with_auth(TPM_RH_PLATFORM, index),
        );

        let template = ek::create_ek_public_from_default_template_2(
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            None,
        )
        .unwrap()
        .marshall()
        .unwrap();
        let (handle, public) = parse_create_primary(&ok(
            &mut raw,
            &create_primary(TPM_RH_ENDORSEMENT, &template),
        ))
        .unwrap();
        ok(&mut raw, &flush_context(handle));
        let parsed = Public::unmarshall(&public).unwrap();
        assert_eq!(
            parsed.marshall().unwrap(),
            public,
            "exactly one TPMT_PUBLIC"
        );
        assert_eq!(u32::from(parsed.object_attributes()), 0x0003_00b2);
        // The same key, whichever connection derives it.
        let (handle, again) = parse_create_primary(&ok(
            &mut raw,
            &create_primary(TPM_RH_ENDORSEMENT, &template),
        ))
        .unwrap();
        ok(&mut raw, &flush_context(handle));
        assert_eq!(again, public);
    }

    #[test]
    fn an_unreachable_tpm_is_an_error() {
        let conf = TctiNameConf::from_str("swtpm:host=127.0.0.1,port=1").unwrap();
        assert!(RawTcti::open(conf).is_err());
    }
}
