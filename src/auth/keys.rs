//! DKIM private keys: loading PEM files, generating new keys (`gannet dkim keygen`), and the
//! public half as published in DNS (`v=DKIM1; k=...; p=...`).
//!
//! Owns the only code that touches key material. Keys are held by aws-lc-rs key pairs and never
//! written anywhere except by [`keygen`], which creates a new file with mode 0600 and refuses to
//! overwrite an existing one. Nothing here knows about messages or DNS lookups.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::names::{normalize_domain, valid_selector};

/// Smallest RSA key Gannet accepts at all (RFC 8301 §3.2: signers MUST use at least 1024 bits).
pub const RSA_MIN_BITS: usize = 1024;
/// Smallest RSA key the signing library (aws-lc) signs with; also the RFC 8301 recommendation.
pub const RSA_SIGNING_MIN_BITS: usize = 2048;

/// Key type for `gannet dkim keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" | "rsa-sha256" => Ok(KeyAlgorithm::Rsa),
            "ed25519" | "ed25519-sha256" => Ok(KeyAlgorithm::Ed25519),
            other => Err(format!(
                "unknown key algorithm {other:?}; expected rsa or ed25519"
            )),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// A loaded signing key. `Send + Sync`: aws-lc key pairs may sign from many threads at once.
pub enum PrivateKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateKey::Rsa(k) => write!(f, "PrivateKey::Rsa({} bits)", k.public_modulus_len() * 8),
            PrivateKey::Ed25519(_) => f.write_str("PrivateKey::Ed25519"),
        }
    }
}

impl PrivateKey {
    pub fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        match self {
            PrivateKey::Rsa(_) => mail_auth::common::crypto::Algorithm::RsaSha256,
            PrivateKey::Ed25519(_) => mail_auth::common::crypto::Algorithm::Ed25519Sha256,
        }
    }

    /// The `k=` tag value.
    pub fn key_type(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(_) => "rsa",
            PrivateKey::Ed25519(_) => "ed25519",
        }
    }

    /// Sign the DKIM signing input (canonical headers + the signature header with empty `b=`).
    /// rsa-sha256 is RSASSA-PKCS1-v1_5 over SHA-256 of the input; ed25519-sha256 (RFC 8463)
    /// is PureEdDSA over the SHA-256 digest of the input.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        match self {
            PrivateKey::Rsa(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input, &mut sig)?;
                Ok(sig)
            }
            PrivateKey::Ed25519(key) => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input);
                Ok(key.sign(digest.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The public key bytes for the DNS `p=` tag: SubjectPublicKeyInfo DER for RSA (what
    /// `openssl rsa -pubout` and opendkim-genkey publish), the raw 32 bytes for Ed25519 (RFC 8463).
    pub fn public_key_dns(&self) -> Vec<u8> {
        match self {
            PrivateKey::Rsa(key) => {
                let der: Result<PublicKeyX509Der<'static>, _> = key.public_key().as_der();
                match der {
                    Ok(der) => der.as_ref().to_vec(),
                    // Encoding a key aws-lc already holds does not fail; fall back to PKCS#1,
                    // which verifiers also accept.
                    Err(_) => key.public_key().as_ref().to_vec(),
                }
            }
            PrivateKey::Ed25519(key) => key.public_key().as_ref().to_vec(),
        }
    }

    /// Does a DNS `p=` value (already base64-decoded) hold this key's public half? RSA keys may
    /// be published as SubjectPublicKeyInfo or as a bare PKCS#1 RSAPublicKey.
    pub fn matches_public(&self, published: &[u8]) -> bool {
        match self {
            PrivateKey::Rsa(key) => {
                published == self.public_key_dns().as_slice()
                    || published == key.public_key().as_ref()
            }
            PrivateKey::Ed25519(key) => published == key.public_key().as_ref(),
        }
    }

    /// `v=DKIM1; k=...; p=...` for this key.
    pub fn dns_value(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.key_type(),
            B64.encode(self.public_key_dns())
        )
    }

    pub fn bits(&self) -> usize {
        match self {
            PrivateKey::Rsa(k) => k.public_modulus_len() * 8,
            PrivateKey::Ed25519(_) => 256,
        }
    }
}

/// What a PEM file turned out to hold, before any library accepts it.
#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa { bits: usize },
    Ed25519,
    Other(&'static str),
}

/// Why a key file could not be used, without the file name (the caller adds context).
#[derive(Debug, PartialEq, Eq)]
pub enum KeyProblem {
    NotPem,
    WrongType {
        found: String,
        expected: &'static str,
    },
    RsaTooShort {
        bits: usize,
    },
    RsaBelowSigningMinimum {
        bits: usize,
    },
    Rejected(String),
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::NotPem => f.write_str(
                "no PEM private key found (expected \"-----BEGIN PRIVATE KEY-----\" (PKCS#8) or, \
                 for RSA, \"-----BEGIN RSA PRIVATE KEY-----\" (PKCS#1))",
            ),
            KeyProblem::WrongType { found, expected } => write!(
                f,
                "the file holds {found}, but the configured algorithm needs {expected}; \
                 fix `algorithm` or point `key` at the right file"
            ),
            KeyProblem::RsaTooShort { bits } => write!(
                f,
                "RSA key is {bits} bits; keys under {RSA_MIN_BITS} bits are refused (RFC 8301); \
                 generate a {RSA_SIGNING_MIN_BITS}-bit key with `gannet dkim keygen --algorithm rsa \
                 --bits 2048` and publish it under a new selector"
            ),
            KeyProblem::RsaBelowSigningMinimum { bits } => write!(
                f,
                "RSA key is {bits} bits; Gannet's signing library (aws-lc) signs only with \
                 {RSA_SIGNING_MIN_BITS} to 8192-bit keys, as RFC 8301 recommends; generate a new \
                 key with `gannet dkim keygen --algorithm rsa --bits 2048` and publish it under a \
                 new selector"
            ),
            KeyProblem::Rejected(why) => write!(f, "the key was rejected: {why}"),
        }
    }
}

/// Parse a PEM private key for `algorithm`.
pub fn parse_private_key(
    pem: &[u8],
    algorithm: crate::config::DkimAlgorithm,
) -> Result<PrivateKey, KeyProblem> {
    use crate::config::DkimAlgorithm;
    let (der, pkcs8) = read_pem(pem)?;
    let kind = if pkcs8 {
        classify_pkcs8(&der)
    } else {
        rsa_bits_pkcs1(&der)
            .map(|bits| KeyKind::Rsa { bits })
            .unwrap_or(KeyKind::Other("a malformed PKCS#1 RSA key"))
    };
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let bits = match kind {
                KeyKind::Rsa { bits } => bits,
                other => {
                    return Err(KeyProblem::WrongType {
                        found: describe(&other),
                        expected: "an RSA key",
                    });
                }
            };
            if bits < RSA_MIN_BITS {
                return Err(KeyProblem::RsaTooShort { bits });
            }
            if bits < RSA_SIGNING_MIN_BITS {
                return Err(KeyProblem::RsaBelowSigningMinimum { bits });
            }
            let key = if pkcs8 {
                RsaKeyPair::from_pkcs8(&der)
            } else {
                RsaKeyPair::from_der(&der)
            };
            key.map(PrivateKey::Rsa)
                .map_err(|e| KeyProblem::Rejected(e.to_string()))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            if kind != KeyKind::Ed25519 {
                return Err(KeyProblem::WrongType {
                    found: describe(&kind),
                    expected: "an Ed25519 key in PKCS#8 form (\"BEGIN PRIVATE KEY\")",
                });
            }
            Ed25519KeyPair::from_pkcs8(&der)
                .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
                .map(PrivateKey::Ed25519)
                .map_err(|e| KeyProblem::Rejected(e.to_string()))
        }
    }
}

fn describe(kind: &KeyKind) -> String {
    match kind {
        KeyKind::Rsa { bits } => format!("a {bits}-bit RSA key"),
        KeyKind::Ed25519 => "an Ed25519 key".to_string(),
        KeyKind::Other(what) => what.to_string(),
    }
}

/// The DER of the first private key in a PEM file, and whether it is PKCS#8 (else PKCS#1).
fn read_pem(pem: &[u8]) -> Result<(Vec<u8>, bool), KeyProblem> {
    let mut reader = pem;
    loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::Pkcs1Key(k))) => {
                return Ok((k.secret_pkcs1_der().to_vec(), false));
            }
            Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => {
                return Ok((k.secret_pkcs8_der().to_vec(), true));
            }
            Ok(Some(rustls_pemfile::Item::Sec1Key(_))) => {
                return Err(KeyProblem::WrongType {
                    found: "an EC (SEC1) key".to_string(),
                    expected: "an RSA or Ed25519 key",
                });
            }
            Ok(Some(_)) => continue, // certificates and other blocks: skip
            Ok(None) | Err(_) => return Err(KeyProblem::NotPem),
        }
    }
}

// --- minimal DER reading: just enough to name the key type and RSA size in error messages ---

/// One DER element: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Bits of the modulus of a PKCS#1 RSAPrivateKey.
fn rsa_bits_pkcs1(der: &[u8]) -> Option<usize> {
    let (tag, seq, _) = der_next(der)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, _version, rest) = der_next(seq)?;
    if tag != TAG_INTEGER {
        return None;
    }
    let (tag, modulus, _) = der_next(rest)?;
    if tag != TAG_INTEGER {
        return None;
    }
    let first = modulus.iter().position(|b| *b != 0)?;
    let significant = &modulus[first..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

fn classify_pkcs8(der: &[u8]) -> KeyKind {
    let parse = || -> Option<KeyKind> {
        let (tag, seq, _) = der_next(der)?;
        if tag != TAG_SEQUENCE {
            return None;
        }
        let (_, _version, rest) = der_next(seq)?;
        let (tag, alg, rest) = der_next(rest)?;
        if tag != TAG_SEQUENCE {
            return None;
        }
        let (tag, oid, _) = der_next(alg)?;
        if tag != TAG_OID {
            return None;
        }
        if oid == OID_ED25519 {
            return Some(KeyKind::Ed25519);
        }
        if oid == OID_RSA {
            let (tag, inner, _) = der_next(rest)?;
            if tag != TAG_OCTET_STRING {
                return None;
            }
            return Some(KeyKind::Rsa {
                bits: rsa_bits_pkcs1(inner)?,
            });
        }
        Some(KeyKind::Other(
            "a key of an unsupported type (not RSA or Ed25519)",
        ))
    };
    parse().unwrap_or(KeyKind::Other("a malformed PKCS#8 key"))
}

// --- key generation ---

/// A DKIM public key record: owner name and TXT value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// `selector._domainkey.domain` (no trailing dot).
    pub name: String,
    /// `v=DKIM1; k=rsa; p=...` as one string.
    pub value: String,
}

impl DnsRecord {
    pub fn for_key(domain: &str, selector: &str, key: &PrivateKey) -> DnsRecord {
        DnsRecord {
            name: format!("{selector}._domainkey.{domain}"),
            value: key.dns_value(),
        }
    }

    /// The record as one zone-file line, the value split into quoted strings of at most 255
    /// bytes (RFC 1035 character-strings), e.g.
    /// `s1._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=rsa; p=MIIB..." "..."`.
    pub fn zone_line(&self) -> String {
        let strings: Vec<String> = split_txt(&self.value)
            .into_iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        format!("{}. 3600 IN TXT {}", self.name, strings.join(" "))
    }
}

/// Split a TXT value into chunks of at most 255 bytes (the values here are ASCII).
pub fn split_txt(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while rest.len() > 255 {
        let mut cut = 255;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

/// Why `gannet dkim keygen` made no key.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("dkim keygen: {message}")]
    Invalid { message: String },
    #[error("cannot write key file {path}: {source} (keygen never overwrites an existing file)")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Generate a new key, write it to `out` (PKCS#8 PEM, mode 0600, never overwriting), and return
/// the text to print: the zone-file record to publish and the `[[dkim]]` entry to add.
/// `bits` applies to RSA only (2048, 3072, 4096 or 8192).
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
    bits: usize,
    out: &Path,
) -> Result<String, KeygenError> {
    let domain = normalize_domain(domain).ok_or_else(|| KeygenError::Invalid {
        message: format!("invalid domain {domain:?}; expected a DNS name such as example.com"),
    })?;
    if !valid_selector(selector) {
        return Err(KeygenError::Invalid {
            message: format!(
                "invalid selector {selector:?}; use letters, digits, '-' and '_' (dots separate \
                 labels), e.g. s2026"
            ),
        });
    }
    let (pkcs8, key, config_alg) = match algorithm {
        KeyAlgorithm::Rsa => {
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                8192 => KeySize::Rsa8192,
                other => {
                    return Err(KeygenError::Invalid {
                        message: format!(
                            "cannot generate a {other}-bit RSA key; use --bits 2048 (recommended), \
                             3072, 4096 or 8192"
                        ),
                    });
                }
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| KeygenError::Invalid {
                message: "RSA key generation failed in aws-lc".to_string(),
            })?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                pair.as_der().map_err(|_| KeygenError::Invalid {
                    message: "could not encode the new RSA key as PKCS#8".to_string(),
                })?;
            let pkcs8 = der.as_ref().to_vec();
            (pkcs8, PrivateKey::Rsa(pair), "rsa-sha256")
        }
        KeyAlgorithm::Ed25519 => {
            let pair = Ed25519KeyPair::generate().map_err(|_| KeygenError::Invalid {
                message: "Ed25519 key generation failed in aws-lc".to_string(),
            })?;
            // PKCS#8 v1: what `openssl genpkey -algorithm ed25519` writes and every tool reads.
            let doc = pair.to_pkcs8v1().map_err(|_| KeygenError::Invalid {
                message: "could not encode the new Ed25519 key as PKCS#8".to_string(),
            })?;
            (
                doc.as_ref().to_vec(),
                PrivateKey::Ed25519(pair),
                "ed25519-sha256",
            )
        }
    };
    write_new_private_file(out, &pem_encode("PRIVATE KEY", &pkcs8))?;
    let record = DnsRecord::for_key(&domain, selector, &key);
    Ok(format!(
        "; DKIM {config_alg} key for {domain}, selector {selector} ({bits} bits)\n\
         ; private key written to {path} (mode 0600)\n\
         ; 1. publish this TXT record (zone-file line; strings of at most 255 bytes):\n\
         {zone}\n\
         ;    as one value, for DNS web forms:\n\
         ;    {value}\n\
         ; 2. add to gannet.toml:\n\
         ;    [[dkim]]\n\
         ;    domain = \"{domain}\"\n\
         ;    selector = \"{selector}\"\n\
         ;    algorithm = \"{config_alg}\"\n\
         ;    key = \"{path}\"\n\
         ; 3. check it with `gannet check-domain {domain}` once DNS has it\n",
        bits = key.bits(),
        path = out.display(),
        zone = record.zone_line(),
        value = record.value,
    ))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_new_private_file(path: &Path, contents: &str) -> Result<(), KeygenError> {
    let err = |source: std::io::Error| KeygenError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimAlgorithm;

    #[test]
    fn txt_split_respects_255_bytes() {
        let v = "x".repeat(600);
        let parts = split_txt(&v);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert_eq!(parts.concat(), v);
        assert_eq!(split_txt("short"), ["short"]);
    }

    #[test]
    fn keygen_writes_0600_key_that_loads_and_matches_record() {
        let dir = tempfile::tempdir().unwrap();
        for (alg, config_alg, k) in [
            (KeyAlgorithm::Rsa, DkimAlgorithm::RsaSha256, "k=rsa"),
            (
                KeyAlgorithm::Ed25519,
                DkimAlgorithm::Ed25519Sha256,
                "k=ed25519",
            ),
        ] {
            let path = dir.path().join(format!("{alg}.pem"));
            let text = keygen("Example.COM", "s1", alg, 2048, &path).unwrap();
            assert!(
                text.contains("s1._domainkey.example.com. 3600 IN TXT"),
                "{text}"
            );
            assert!(text.contains(k), "{text}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            let key = parse_private_key(&std::fs::read(&path).unwrap(), config_alg).unwrap();
            // Every quoted string in the zone line is at most 255 bytes and together they
            // make the record for the key that was written.
            let strings: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with(';'))
                .flat_map(|l| l.split('"').skip(1).step_by(2))
                .collect();
            assert!(strings.iter().all(|s| s.len() <= 255));
            assert_eq!(strings.concat(), key.dns_value());
            // Never overwrites.
            let again = keygen("example.com", "s1", alg, 2048, &path).unwrap_err();
            assert!(again.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn keygen_refuses_odd_sizes_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        let e = keygen("example.com", "s", KeyAlgorithm::Rsa, 1024, &p).unwrap_err();
        assert!(e.to_string().contains("--bits 2048"), "{e}");
        let e = keygen("exa mple.com", "s", KeyAlgorithm::Rsa, 2048, &p).unwrap_err();
        assert!(e.to_string().contains("invalid domain"), "{e}");
        let e = keygen("example.com", "s;1", KeyAlgorithm::Ed25519, 0, &p).unwrap_err();
        assert!(e.to_string().contains("invalid selector"), "{e}");
        assert!(!p.exists());
    }

    #[test]
    fn der_reader_names_rsa_sizes() {
        // A PKCS#1 RSAPrivateKey header with a 1024-bit modulus (leading 0x00 sign byte).
        let mut modulus = vec![0x00, 0xc1];
        modulus.extend(std::iter::repeat_n(0x55, 127));
        let mut inner = vec![TAG_INTEGER, 1, 0, TAG_INTEGER, 0x81, modulus.len() as u8];
        inner.extend(&modulus);
        let mut der = vec![TAG_SEQUENCE, 0x81, inner.len() as u8];
        der.extend(&inner);
        assert_eq!(rsa_bits_pkcs1(&der), Some(1024));
        assert_eq!(rsa_bits_pkcs1(b"\x30\x03\x02\x01"), None);
    }
}
