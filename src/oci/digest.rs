//! Digests (`sha256:<hex>`), a hashing writer, and canonical JSON.
//!
//! Canonical JSON here means: object keys sorted bytewise, no insignificant
//! whitespace, serde_json's number and string escaping. It does not depend on
//! serde_json's `preserve_order` feature (another crate may switch it on), so
//! digests of configs and manifests stay stable.

use std::io::{self, Write};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::OciError;
use super::spec::Digest;

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Is `s` a well-formed `sha256:<64 lowercase hex>` digest? The one rule
/// for lockfiles, references and the blob store.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The hex part of a well-formed `sha256:<64 lowercase hex>` digest.
pub fn hex_part(digest: &str) -> Result<&str, OciError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_digest(digest) => Ok(hex),
        _ => Err(OciError::InvalidDigest(digest.to_string())),
    }
}

/// Passes bytes through to `inner` while hashing and counting them, so a
/// blob's digest is known the moment it is written (no second read).
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the digest and the byte count of what passed through.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Serialize a JSON value canonically (sorted keys, compact).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    // Serializing a `Value` into a Vec cannot fail.
    serde_json::to_vec(&canonical(value)).unwrap_or_default()
}

/// The value with object keys sorted at every level. Re-inserting in sorted
/// order gives sorted output whatever map type serde_json was built with
/// (`BTreeMap` sorts; `preserve_order`'s `IndexMap` keeps insertion order),
/// so this is also what pretty-printed canonical files (lockfiles) use.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"z": [1, "x"], "y": null} }"#).unwrap();
        assert_eq!(canonical_json(&v), br#"{"a":{"y":null,"z":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn hex_part_rejects_malformed_digests() {
        assert!(hex_part("sha256:abc").is_err());
        assert!(hex_part(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(hex_part(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(hex_part(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn writer_hashes_what_passes_through() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"hello").unwrap();
        let (inner, digest, len) = w.finish();
        assert_eq!(inner, b"hello");
        assert_eq!(len, 5);
        assert_eq!(digest, sha256_digest(b"hello"));
    }
}
