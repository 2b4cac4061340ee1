//! TPMT_PUBLIC: the public area of a TPM object (TCG TPM 2.0 Library, Part 2 §12.2), parsed
//! from its wire form, its TPM name, and the checks a CA makes before certifying an
//! attestation key.
//!
//! The parser is strict: every field is bounds-checked, unknown algorithms in places the
//! structure's layout depends on are errors (never guesses), and a buffer must hold exactly
//! one structure. The marshalled bytes are kept in [`TpmPublic::raw`], because the TPM name
//! and any signature over the key are computed on them, not on a re-marshalled copy.

use sha2::{Digest, Sha256};

use crate::{ResponseReader, WireError};

/// TPMA_OBJECT bits (Part 2 §8.3).
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// TPM_ALG_ID values (Part 2 §6.3) that public areas use.
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const XOR: u16 = 0x000A;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const SM3_256: u16 = 0x0012;
    pub const SM4: u16 = 0x0013;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001A;
    pub const SM2: u16 = 0x001B;
    pub const ECSCHNORR: u16 = 0x001C;
    pub const ECMQV: u16 = 0x001D;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const CAMELLIA: u16 = 0x0026;
    pub const CTR: u16 = 0x0040;
    pub const OFB: u16 = 0x0041;
    pub const CBC: u16 = 0x0042;
    pub const CFB: u16 = 0x0043;
    pub const ECB: u16 = 0x0044;
}

/// TPM_ECC_CURVE values.
pub mod curve {
    pub const NIST_P256: u16 = 0x0003;
    pub const NIST_P384: u16 = 0x0004;
    pub const NIST_P521: u16 = 0x0005;
}

/// A parsed TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// TPMI_ALG_PUBLIC: [`alg::RSA`], [`alg::ECC`], [`alg::KEYEDHASH`] or [`alg::SYMCIPHER`].
    pub object_type: u16,
    pub name_alg: u16,
    /// TPMA_OBJECT (see [`attr`]).
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub params: PublicParams,
    /// The marshalled TPMT_PUBLIC, exactly as parsed.
    pub raw: Vec<u8>,
}

/// The type-specific parameters and unique field of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicParams {
    Rsa {
        /// (algorithm, key bits, mode) of a storage key's symmetric cipher; None for NULL.
        symmetric: Option<(u16, u16, u16)>,
        scheme: u16,
        /// The scheme's hash; None for NULL and RSAES (which have none).
        scheme_hash: Option<u16>,
        key_bits: u16,
        /// As marshalled: 0 means the default exponent 65537.
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        symmetric: Option<(u16, u16, u16)>,
        scheme: u16,
        scheme_hash: Option<u16>,
        curve: u16,
        /// The KDF scheme (its hash, if any, is in [`TpmPublic::raw`] only).
        kdf: u16,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// A keyed-hash or symmetric-cipher object (parsed for well-formedness, not kept).
    Other(u16),
}

/// TPMT_SYM_DEF_OBJECT.
fn symmetric(r: &mut ResponseReader<'_>) -> Result<Option<(u16, u16, u16)>, WireError> {
    match r.u16()? {
        alg::NULL => Ok(None),
        a @ (alg::AES | alg::SM4 | alg::CAMELLIA) => {
            let bits = r.u16()?;
            let mode = r.u16()?;
            Ok(Some((a, bits, mode)))
        }
        _ => Err(WireError::Unexpected(
            "unknown symmetric algorithm in a public area",
        )),
    }
}

/// TPMT_RSA_SCHEME: (scheme, hash).
fn rsa_scheme(r: &mut ResponseReader<'_>) -> Result<(u16, Option<u16>), WireError> {
    match r.u16()? {
        s @ (alg::NULL | alg::RSAES) => Ok((s, None)),
        s @ (alg::RSASSA | alg::RSAPSS | alg::OAEP) => Ok((s, Some(r.u16()?))),
        _ => Err(WireError::Unexpected("unknown RSA scheme in a public area")),
    }
}

/// TPMT_ECC_SCHEME: (scheme, hash).
fn ecc_scheme(r: &mut ResponseReader<'_>) -> Result<(u16, Option<u16>), WireError> {
    match r.u16()? {
        alg::NULL => Ok((alg::NULL, None)),
        alg::ECDAA => {
            let hash = r.u16()?;
            let _count = r.u16()?;
            Ok((alg::ECDAA, Some(hash)))
        }
        s @ (alg::ECDSA | alg::ECDH | alg::SM2 | alg::ECSCHNORR | alg::ECMQV) => {
            Ok((s, Some(r.u16()?)))
        }
        _ => Err(WireError::Unexpected("unknown ECC scheme in a public area")),
    }
}

/// TPMT_KDF_SCHEME: the scheme (its hash is skipped).
fn kdf_scheme(r: &mut ResponseReader<'_>) -> Result<u16, WireError> {
    match r.u16()? {
        alg::NULL => Ok(alg::NULL),
        k @ (alg::KDF1_SP800_56A | alg::KDF2 | alg::KDF1_SP800_108) => {
            let _hash = r.u16()?;
            Ok(k)
        }
        _ => Err(WireError::Unexpected("unknown KDF scheme in a public area")),
    }
}

/// TPMT_KEYEDHASH_SCHEME.
fn keyed_hash_scheme(r: &mut ResponseReader<'_>) -> Result<(), WireError> {
    match r.u16()? {
        alg::NULL => Ok(()),
        alg::HMAC => r.skip(2),
        alg::XOR => r.skip(4),
        _ => Err(WireError::Unexpected(
            "unknown keyed-hash scheme in a public area",
        )),
    }
}

fn hash_name(alg: u16) -> String {
    match alg {
        alg::SHA1 => "SHA-1".into(),
        alg::SHA256 => "SHA-256".into(),
        alg::SHA384 => "SHA-384".into(),
        alg::SHA512 => "SHA-512".into(),
        alg::SM3_256 => "SM3-256".into(),
        alg::NULL => "NULL".into(),
        other => format!("algorithm {other:#06x}"),
    }
}

impl TpmPublic {
    /// Parses exactly one marshalled TPMT_PUBLIC (no trailing bytes).
    pub fn parse(tpmt_public: &[u8]) -> Result<Self, WireError> {
        let mut r = ResponseReader::new(tpmt_public);
        let object_type = r.u16()?;
        let name_alg = r.u16()?;
        let attributes = r.u32()?;
        let auth_policy = r.tpm2b()?.to_vec();
        let params = match object_type {
            alg::RSA => {
                let symmetric = symmetric(&mut r)?;
                let (scheme, scheme_hash) = rsa_scheme(&mut r)?;
                let key_bits = r.u16()?;
                let exponent = r.u32()?;
                let modulus = r.tpm2b()?.to_vec();
                PublicParams::Rsa {
                    symmetric,
                    scheme,
                    scheme_hash,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            alg::ECC => {
                let symmetric = symmetric(&mut r)?;
                let (scheme, scheme_hash) = ecc_scheme(&mut r)?;
                let curve = r.u16()?;
                let kdf = kdf_scheme(&mut r)?;
                let x = r.tpm2b()?.to_vec();
                let y = r.tpm2b()?.to_vec();
                PublicParams::Ecc {
                    symmetric,
                    scheme,
                    scheme_hash,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            alg::KEYEDHASH => {
                keyed_hash_scheme(&mut r)?;
                let _unique = r.tpm2b()?;
                PublicParams::Other(alg::KEYEDHASH)
            }
            alg::SYMCIPHER => {
                let _sym = symmetric(&mut r)?;
                let _unique = r.tpm2b()?;
                PublicParams::Other(alg::SYMCIPHER)
            }
            _ => {
                return Err(WireError::Unexpected(
                    "unknown object type in a public area",
                ))
            }
        };
        r.expect_end("trailing bytes after a TPMT_PUBLIC")?;
        Ok(TpmPublic {
            object_type,
            name_alg,
            attributes,
            auth_policy,
            params,
            raw: tpmt_public.to_vec(),
        })
    }

    /// Parses a TPM2B_PUBLIC: a u16 size and exactly that many bytes of TPMT_PUBLIC.
    pub fn parse_tpm2b(tpm2b_public: &[u8]) -> Result<Self, WireError> {
        let mut r = ResponseReader::new(tpm2b_public);
        let inner = r.tpm2b()?;
        r.expect_end("trailing bytes after a TPM2B_PUBLIC")?;
        Self::parse(inner)
    }

    /// The TPM name of the object: nameAlg (big-endian u16) followed by the nameAlg digest of
    /// the marshalled public area. Only SHA-256 names are supported.
    pub fn name(&self) -> Result<Vec<u8>, WireError> {
        if self.name_alg != alg::SHA256 {
            return Err(WireError::Unexpected(
                "name algorithm other than SHA-256 (unsupported)",
            ));
        }
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(&self.raw));
        Ok(name)
    }

    /// Whether the object has all of `bits` set.
    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// Why this is not an attestation key a CA may certify: empty if it is a restricted
    /// signing key generated in and bound to the TPM (restricted, sign, not decrypt,
    /// fixedTPM, fixedParent, sensitiveDataOrigin), named with SHA-256, and either ECC
    /// NIST P-256 with ECDSA/SHA-256 or RSA 2048 with RSASSA or RSAPSS/SHA-256. Otherwise, one
    /// human-readable line per requirement it violates.
    pub fn aik_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (bit, name) in [
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN, "sign"),
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        ] {
            if !self.has(bit) {
                v.push(format!("attribute {name} is not set"));
            }
        }
        if self.has(attr::DECRYPT) {
            v.push("attribute decrypt is set (an attestation key only signs)".into());
        }
        if self.name_alg != alg::SHA256 {
            v.push(format!(
                "name algorithm is {}, not SHA-256",
                hash_name(self.name_alg)
            ));
        }
        match &self.params {
            PublicParams::Ecc {
                scheme,
                scheme_hash,
                curve,
                ..
            } => {
                if *curve != curve::NIST_P256 {
                    v.push(format!("ECC curve {curve:#06x} is not NIST P-256"));
                }
                if *scheme != alg::ECDSA || *scheme_hash != Some(alg::SHA256) {
                    v.push(format!(
                        "ECC signing scheme {scheme:#06x} with {} is not ECDSA with SHA-256",
                        hash_name(scheme_hash.unwrap_or(alg::NULL))
                    ));
                }
            }
            PublicParams::Rsa {
                scheme,
                scheme_hash,
                key_bits,
                ..
            } => {
                if *key_bits != 2048 {
                    v.push(format!("RSA key of {key_bits} bits, not 2048"));
                }
                if !matches!(*scheme, alg::RSASSA | alg::RSAPSS)
                    || *scheme_hash != Some(alg::SHA256)
                {
                    v.push(format!(
                        "RSA signing scheme {scheme:#06x} with {} is not RSASSA or RSAPSS with \
                         SHA-256",
                        hash_name(scheme_hash.unwrap_or(alg::NULL))
                    ));
                }
            }
            PublicParams::Other(t) => {
                v.push(format!("object type {t:#06x} is not an RSA or ECC key"));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of hex text laid out over several lines.
    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// The TPMT_PUBLIC of an attestation key made by `HostTpm::create_aik` on swtpm 0.7.
    const AIK: &str = "
        0023000b00050472000000100018000b000300100020c93202b30659b0b1a94e
        cfb6974825fd7909eb58fc67e75f73978bd2bf5676790020ea013e06510ecd4c
        82dd188a9545b1c4957efac4676170541ae588345f8356ad
    ";

    /// The TPMT_PUBLIC of swtpm's RSA-2048 EK (TCG template L-1), from `ek_public_rsa`.
    const EK: &str = "
        0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e0652
        0b64f2a1da1b331469aa00060080004300100800000000000100e3814afff8fc
        249833b8bbc2ce6fbb1accc0a52ffa715da54cc1be45a44fce483b07625371ba
        431090751c670b7858de79b691ddf8ae3251a58c13ad1e788424e64fa3fdff09
        4b7fed9a51c4b96fc6a51a53913f624ac551bbced6bc8a6dd14ef2c648d47857
        9f4b26d473bf2c9803cc939c7fb1cc99d094ba78c66d3649060253f4cd41eaba
        c9009c03e1671a719123bd804ea77895fe71c49eb3372b40f15dbec23695bd8f
        a56962ce3666246ea5dd0ba2400535a6c39d614343cc7e8f9b005e9df2376cff
        acee04f78198004f814a8c2a51fbb91948ec6083d5c9f8cb7d94652f53b04896
        11f2a72cef325b3f31ca19c9852aa816517f3629e32339b37f47
    ";

    /// An RSA-2048 RSASSA/SHA-256 restricted signing key, built by hand.
    fn rsa_aik() -> Vec<u8> {
        let attrs = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::USER_WITH_AUTH
            | attr::RESTRICTED
            | attr::SIGN;
        let mut v = Vec::new();
        v.extend_from_slice(&alg::RSA.to_be_bytes());
        v.extend_from_slice(&alg::SHA256.to_be_bytes());
        v.extend_from_slice(&attrs.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // no policy
        v.extend_from_slice(&alg::NULL.to_be_bytes());
        v.extend_from_slice(&alg::RSASSA.to_be_bytes());
        v.extend_from_slice(&alg::SHA256.to_be_bytes());
        v.extend_from_slice(&2048u16.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&256u16.to_be_bytes());
        v.extend_from_slice(&[0xc5; 256]);
        v
    }

    #[test]
    fn parses_a_tpm_made_attestation_key() {
        let raw = unhex(AIK);
        let p = TpmPublic::parse(&raw).unwrap();
        assert_eq!(p.object_type, alg::ECC);
        assert_eq!(p.name_alg, alg::SHA256);
        assert_eq!(
            p.attributes,
            attr::FIXED_TPM
                | attr::FIXED_PARENT
                | attr::SENSITIVE_DATA_ORIGIN
                | attr::USER_WITH_AUTH
                | attr::NO_DA
                | attr::RESTRICTED
                | attr::SIGN
        );
        assert!(p.auth_policy.is_empty());
        let PublicParams::Ecc {
            symmetric,
            scheme,
            scheme_hash,
            curve,
            kdf,
            x,
            y,
        } = &p.params
        else {
            panic!("{:?}", p.params);
        };
        assert_eq!(*symmetric, None);
        assert_eq!((*scheme, *scheme_hash), (alg::ECDSA, Some(alg::SHA256)));
        assert_eq!((*curve, *kdf), (curve::NIST_P256, alg::NULL));
        assert_eq!(x[..4], [0xc9, 0x32, 0x02, 0xb3]);
        assert_eq!(y[..4], [0xea, 0x01, 0x3e, 0x06]);
        assert_eq!(p.raw, raw);
        assert_eq!(p.aik_violations(), Vec::<String>::new());
        // SHA-256 of the 88 bytes, computed independently (Python hashlib).
        assert_eq!(
            p.name().unwrap(),
            unhex("000b 4be0d153bfc924e813a989a4fcd1bfa44ee72c44861107491ed8c8f5f49c6a54")
        );
        let mut tpm2b = (raw.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&raw);
        assert_eq!(TpmPublic::parse_tpm2b(&tpm2b).unwrap(), p);
    }

    #[test]
    fn parses_the_rsa_ek_and_refuses_it_as_an_attestation_key() {
        let p = TpmPublic::parse(&unhex(EK)).unwrap();
        assert_eq!(p.object_type, alg::RSA);
        assert_eq!(p.attributes, 0x0003_00b2);
        // TCG EK Credential Profile policy A: PolicySecret(TPM_RH_ENDORSEMENT).
        assert_eq!(p.auth_policy[..4], [0x83, 0x71, 0x97, 0x67]);
        let PublicParams::Rsa {
            symmetric,
            scheme,
            scheme_hash,
            key_bits,
            exponent,
            modulus,
        } = &p.params
        else {
            panic!("{:?}", p.params);
        };
        assert_eq!(*symmetric, Some((alg::AES, 128, alg::CFB)));
        assert_eq!((*scheme, *scheme_hash), (alg::NULL, None));
        assert_eq!((*key_bits, *exponent, modulus.len()), (2048, 0, 256));
        let why = p.aik_violations();
        assert!(why.iter().any(|w| w.contains("sign is not set")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("decrypt is set")), "{why:?}");
        assert!(
            why.iter().any(|w| w.contains("RSA signing scheme")),
            "{why:?}"
        );
        assert!(!why.iter().any(|w| w.contains("restricted")), "{why:?}");
    }

    #[test]
    fn an_rsa_2048_rsassa_restricted_signing_key_is_an_attestation_key() {
        let p = TpmPublic::parse(&rsa_aik()).unwrap();
        assert_eq!(p.aik_violations(), Vec::<String>::new());
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        for raw in [unhex(AIK), unhex(EK), rsa_aik()] {
            for cut in 0..raw.len() {
                assert!(TpmPublic::parse(&raw[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = raw.clone();
            long.push(0);
            assert!(TpmPublic::parse(&long).is_err());
            let mut tpm2b = (raw.len() as u16).to_be_bytes().to_vec();
            tpm2b.extend_from_slice(&raw);
            for cut in 0..tpm2b.len() {
                assert!(
                    TpmPublic::parse_tpm2b(&tpm2b[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            tpm2b.push(0);
            assert!(TpmPublic::parse_tpm2b(&tpm2b).is_err());
        }
    }

    #[test]
    fn mutated_areas_never_panic() {
        // A small deterministic generator: flip, set or drop bytes all over both areas.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for raw in [unhex(AIK), unhex(EK)] {
            for _ in 0..5000 {
                let mut m = raw.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % m.len() as u64) as usize;
                    match next() % 3 {
                        0 => m[at] ^= 1 << (next() % 8),
                        1 => m[at] = next() as u8,
                        _ => {
                            m.remove(at);
                        }
                    }
                }
                if let Ok(p) = TpmPublic::parse(&m) {
                    let _ = p.aik_violations();
                    let _ = p.name();
                }
            }
        }
    }

    #[test]
    fn each_requirement_is_reported() {
        let raw = unhex(AIK);
        let with = |at: usize, bytes: &[u8]| {
            let mut m = raw.clone();
            m[at..at + bytes.len()].copy_from_slice(bytes);
            TpmPublic::parse(&m).unwrap()
        };
        // nameAlg SHA-1: no SHA-256 name, and not an attestation key.
        let sha1 = with(2, &alg::SHA1.to_be_bytes());
        assert!(sha1.name().is_err());
        assert_eq!(
            sha1.aik_violations(),
            ["name algorithm is SHA-1, not SHA-256"]
        );
        // Curve P-384.
        let p384 = with(16, &curve::NIST_P384.to_be_bytes());
        assert_eq!(
            p384.aik_violations(),
            ["ECC curve 0x0004 is not NIST P-256"]
        );
        // ECDSA with SHA-384.
        let sha384 = with(14, &alg::SHA384.to_be_bytes());
        assert_eq!(sha384.aik_violations().len(), 1);
        // Not restricted, not fixedTPM.
        let attrs = (attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::SIGN).to_be_bytes();
        let loose = with(4, &attrs);
        assert_eq!(
            loose.aik_violations(),
            [
                "attribute restricted is not set",
                "attribute fixedTPM is not set"
            ]
        );
        // A keyed-hash object parses but is no key.
        let mut keyed = vec![0, 8, 0, 0x0b, 0, 0, 0, 0x12, 0, 0, 0, 0x10, 0, 2, 1, 2];
        let p = TpmPublic::parse(&keyed).unwrap();
        assert_eq!(p.params, PublicParams::Other(alg::KEYEDHASH));
        assert!(p
            .aik_violations()
            .iter()
            .any(|w| w.contains("not an RSA or ECC key")));
        keyed[1] = 0x99;
        assert_eq!(
            TpmPublic::parse(&keyed),
            Err(WireError::Unexpected(
                "unknown object type in a public area"
            ))
        );
        // An unknown scheme is an error, not a guess at the layout.
        let mut bad = raw.clone();
        bad[12..14].copy_from_slice(&0x0099u16.to_be_bytes());
        assert!(TpmPublic::parse(&bad).is_err());
    }
}
