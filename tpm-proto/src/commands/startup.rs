//! The TPM as a whole: start-up and shut-down, its random number generator, its properties.

use crate::{cc, CommandBuilder, WireError};

use super::{response_parameters, single_tpm2b_parameter};

pub const TPM_SU_CLEAR: u16 = 0x0000;
pub const TPM_SU_STATE: u16 = 0x0001;

/// TPM_CAP_TPM_PROPERTIES, the capability [`get_capability`] reads with [`pt`] properties.
pub const TPM_CAP_TPM_PROPERTIES: u32 = 6;
/// TPM_CAP_COMMANDS: the TPMA_CC of each implemented command.
pub const TPM_CAP_COMMANDS: u32 = 2;

/// TPM_PT values (Part 2 §6.13): fixed properties of the TPM.
pub mod pt {
    pub const FAMILY_INDICATOR: u32 = 0x100;
    pub const LEVEL: u32 = 0x101;
    pub const REVISION: u32 = 0x102;
    pub const MANUFACTURER: u32 = 0x105;
    pub const VENDOR_STRING_1: u32 = 0x106;
    pub const FIRMWARE_VERSION_1: u32 = 0x10B;
    /// Commands implemented, library and vendor ones together.
    pub const TOTAL_COMMANDS: u32 = 0x129;
    pub const LIBRARY_COMMANDS: u32 = 0x12A;
    /// Vendor-specific commands implemented.
    pub const VENDOR_COMMANDS: u32 = 0x12B;
}

pub fn startup(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::STARTUP).u16(su).finish()
}

pub fn shutdown(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::SHUTDOWN).u16(su).finish()
}

pub fn get_random(bytes: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::GET_RANDOM)
        .u16(bytes)
        .finish()
}

/// HierarchyChangeAuth: sets the authorization value of `hierarchy` (TPM_RH_PLATFORM,
/// TPM_RH_OWNER, ...) to `new_auth`, authorised by its current value `current`.
pub fn hierarchy_change_auth(hierarchy: u32, current: &[u8], new_auth: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::HIERARCHY_CHANGE_AUTH)
        .u32(hierarchy)
        .password_auth(current)
        .tpm2b(new_auth)
        .finish()
}

/// HierarchyControl: `auth_handle` (authorised with `auth`) sets hierarchy `enable` on or off.
pub fn hierarchy_control(auth_handle: u32, auth: &[u8], enable: u32, state: bool) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::HIERARCHY_CONTROL)
        .u32(auth_handle)
        .password_auth(auth)
        .u32(enable)
        .u8(u8::from(state))
        .finish()
}

/// Parses a GetRandom response into the random bytes.
pub fn parse_get_random(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    single_tpm2b_parameter(resp)
}

/// GetCapability of `count` values of `capability` from `property` on (for
/// [`TPM_CAP_TPM_PROPERTIES`], [`pt`] values; parsed by [`parse_tpm_properties`]).
pub fn get_capability(capability: u32, property: u32, count: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::GET_CAPABILITY)
        .u32(capability)
        .u32(property)
        .u32(count)
        .finish()
}

/// The (property, value) pairs of a GetCapability response for [`TPM_CAP_TPM_PROPERTIES`]
/// (the TPM may answer fewer than asked for).
pub fn parse_tpm_properties(resp: &[u8]) -> Result<Vec<(u32, u32)>, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let _more_data = r.u8()?;
    if r.u32()? != TPM_CAP_TPM_PROPERTIES {
        return Err(WireError::Unexpected(
            "GetCapability answered another capability",
        ));
    }
    let count = r.u32()?;
    // Each pair takes 8 bytes: a count the response cannot hold is refused before anything
    // is allocated for it.
    if count as usize > r.remaining() / 8 {
        return Err(WireError::Unexpected(
            "GetCapability counts more properties than it holds",
        ));
    }
    (0..count).map(|_| Ok((r.u32()?, r.u32()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::response;

    #[test]
    fn tpm_error_is_surfaced() {
        let resp = crate::error_response(crate::rc::FAILURE);
        assert_eq!(
            parse_get_random(&resp),
            Err(WireError::Tpm(crate::rc::FAILURE))
        );
    }

    #[test]
    fn tpm_properties_are_listed() {
        let cmd = get_capability(TPM_CAP_TPM_PROPERTIES, pt::FAMILY_INDICATOR, 12);
        assert_eq!(&cmd[10..], &[0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 12]);
        let mut params = vec![1, 0, 0, 0, 6, 0, 0, 0, 2];
        params.extend_from_slice(&[0, 0, 1, 0, 0x32, 0x2e, 0x30, 0]);
        params.extend_from_slice(&[0, 0, 1, 5, 0x49, 0x42, 0x4d, 0]);
        let resp = response(None, &params, false);
        assert_eq!(
            parse_tpm_properties(&resp).unwrap(),
            [
                (pt::FAMILY_INDICATOR, 0x322e_3000),
                (pt::MANUFACTURER, 0x4942_4d00)
            ]
        );
        // Another capability, or a count the response does not hold, is refused.
        let mut other = params.clone();
        other[4] = 5;
        assert!(parse_tpm_properties(&response(None, &other, false)).is_err());
        let mut many = params;
        many[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_tpm_properties(&response(None, &many, false)).is_err());
    }
}
