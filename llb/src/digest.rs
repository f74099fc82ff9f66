use serde::{Serialize, Serializer};
use std::fmt;

/// A blake3 digest identifying a vertex by what it computes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The first 12 hex digits, for display where the whole digest is noise.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Feeds typed, length-prefixed fields into blake3. Digests are part of kiln's cache keys and must not change
/// when a serialization crate changes its output, so the encoding is spelled out here and pinned by
/// golden-digest tests: every field is written with a type tag, strings and lists with their length.
pub struct StableHasher(blake3::Hasher);

impl StableHasher {
    /// `domain` separates hashes of different kinds of objects.
    pub fn new(domain: &str) -> Self {
        let mut hasher = StableHasher(blake3::Hasher::new());
        hasher.write_str(domain);
        hasher
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.update(b"b");
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    pub fn write_u64(&mut self, n: u64) {
        self.0.update(b"u");
        self.0.update(&n.to_le_bytes());
    }

    pub fn write_len(&mut self, n: usize) {
        self.0.update(b"l");
        self.0.update(&(n as u64).to_le_bytes());
    }

    pub fn write_bool(&mut self, b: bool) {
        self.0.update(if b { b"T" } else { b"F" });
    }

    /// Marks which variant of an enum follows, so different variants with equal fields hash apart.
    pub fn write_tag(&mut self, tag: &str) {
        self.0.update(b"t");
        self.write_str(tag);
    }

    pub fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

/// Canonical hashing of an LLB value (see [`StableHasher`]).
pub trait StableHash {
    fn stable_hash(&self, h: &mut StableHasher);
}

impl StableHash for str {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_str(self)
    }
}

impl StableHash for String {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_str(self)
    }
}

impl StableHash for bool {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_bool(*self)
    }
}

impl StableHash for u32 {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(u64::from(*self))
    }
}

impl StableHash for u64 {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(*self)
    }
}

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        match self {
            None => h.write_tag("none"),
            Some(v) => {
                h.write_tag("some");
                v.stable_hash(h);
            }
        }
    }
}

impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_len(self.len());
        for item in self {
            item.stable_hash(h);
        }
    }
}

impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.as_slice().stable_hash(h)
    }
}

impl<T: StableHash + ?Sized> StableHash for &T {
    fn stable_hash(&self, h: &mut StableHasher) {
        (**self).stable_hash(h)
    }
}
