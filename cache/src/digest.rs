use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A `sha256:<64 lowercase hex>` content digest, the only algorithm OCI requires and the only one the store
/// keeps. Other algorithms are refused at parse time rather than half-supported.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn from_sha256(raw: [u8; 32]) -> Digest {
        Digest(raw)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex characters after `sha256:`, as used for file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the bare hex part (a blob file name).
    pub fn from_hex(encoded: &str) -> Result<Digest> {
        let invalid = |reason: &str| Error::InvalidDigest {
            input: encoded.to_owned(),
            reason: reason.to_owned(),
        };
        if encoded.len() != 64 {
            return Err(invalid("a sha256 digest has 64 hex characters"));
        }
        // OCI's grammar allows only lowercase for sha256; accepting uppercase would give one blob two names.
        if !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the hex part must be lowercase 0-9a-f"));
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(encoded, &mut raw).map_err(|e| invalid(&e.to_string()))?;
        Ok(Digest(raw))
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest> {
        match s.split_once(':') {
            Some(("sha256", encoded)) => Digest::from_hex(encoded).map_err(|_| Error::InvalidDigest {
                input: s.to_owned(),
                reason: "expected sha256: followed by 64 lowercase hex characters".to_owned(),
            }),
            Some((algorithm, _)) => Err(Error::InvalidDigest {
                input: s.to_owned(),
                reason: format!("unsupported algorithm {algorithm:?}, only sha256 is supported"),
            }),
            None => Err(Error::InvalidDigest {
                input: s.to_owned(),
                reason: "missing the algorithm prefix (sha256:)".to_owned(),
            }),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Feeds everything read or written through it into a sha256 and counts the bytes.
pub(crate) struct Hashing<T> {
    pub inner: T,
    hasher: Sha256,
    pub count: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
    }
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
