//! A suite's signed `InRelease`: its OpenPGP signature checked against the
//! keyrings the source names (rpgp, pure Rust), then its fields: date,
//! `Valid-Until`, and the SHA-256 of every index it lists.
//!
//! Invariants: nothing of an `InRelease` is used before a signature made by
//! a key of the named keyrings verified over exactly the text that is then
//! parsed (the cleartext inside the signature, never the bytes around it);
//! a suite whose `Valid-Until` is in the past is refused, like apt does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};

use super::DebError;
use super::index::{field, paragraphs};

/// The verified content of one `InRelease`.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub codename: String,
    /// As written (`Sat, 10 May 2025 09:04:05 UTC`).
    pub date: String,
    /// Index path (`main/binary-amd64/Packages.xz`) → (sha256 hex, size).
    pub sha256: BTreeMap<String, (String, u64)>,
}

/// Read every public key in the keyring files (binary `.gpg` or armored).
pub(crate) fn load_keys(files: &[PathBuf]) -> Result<Vec<SignedPublicKey>, DebError> {
    let mut keys = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| DebError::Keyring {
            file: f.display().to_string(),
            problem: format!("cannot read: {e}"),
        })?;
        let bad = |e: pgp::errors::Error| DebError::Keyring {
            file: f.display().to_string(),
            problem: e.to_string(),
        };
        if bytes.starts_with(b"-----BEGIN") {
            let (it, _) = SignedPublicKey::from_armor_many(&bytes[..]).map_err(bad)?;
            for k in it {
                keys.push(k.map_err(bad)?);
            }
        } else {
            for k in SignedPublicKey::from_bytes_many(&bytes[..]).map_err(bad)? {
                keys.push(k.map_err(bad)?);
            }
        }
    }
    if keys.is_empty() {
        return Err(DebError::Keyring {
            file: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            problem: "holds no public key".into(),
        });
    }
    Ok(keys)
}

/// Verify `bytes` (an `InRelease`) with `keys` and return the signed text.
pub(crate) fn verify(
    bytes: &[u8],
    keys: &[SignedPublicKey],
    url: &str,
) -> Result<String, DebError> {
    let bad = |problem: String| DebError::Signature {
        url: url.to_string(),
        problem,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text".into()))?;
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| bad(format!("is not an OpenPGP cleartext-signed file: {e}")))?;
    for k in keys {
        if msg.verify(&k.primary_key).is_ok() {
            return Ok(msg.signed_text());
        }
        for sub in &k.public_subkeys {
            if msg.verify(&sub.key).is_ok() {
                return Ok(msg.signed_text());
            }
        }
    }
    Err(bad(
        "no signature verifies with a key of the source's keyring".into(),
    ))
}

/// Parse the verified text of an `InRelease`; `now` is seconds since the
/// epoch, for `Valid-Until`.
pub(crate) fn parse(text: &str, url: &str, now: u64) -> Result<Release, DebError> {
    let bad = |problem: String| DebError::Release {
        url: url.to_string(),
        problem,
    };
    let text = text.replace("\r\n", "\n");
    let p = paragraphs(&text)
        .into_iter()
        .next()
        .ok_or_else(|| bad("is empty".into()))?;
    let date = field(&p, "Date")
        .ok_or_else(|| bad("has no `Date`".into()))?
        .to_string();
    let valid_until = field(&p, "Valid-Until").map(str::to_string);
    if let Some(v) = &valid_until {
        let t = parse_date(v).ok_or_else(|| bad(format!("`Valid-Until: {v}` is not a date")))?;
        if t < now {
            return Err(DebError::Expired {
                url: url.to_string(),
                valid_until: v.clone(),
            });
        }
    }
    let mut sha256 = BTreeMap::new();
    for line in field(&p, "SHA256").unwrap_or("").lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [h, size, path] = w[..] {
            let size = size
                .parse()
                .map_err(|_| bad(format!("SHA256 line `{line}`: bad size")))?;
            sha256.insert(path.to_string(), (h.to_ascii_lowercase(), size));
        }
    }
    if sha256.is_empty() {
        return Err(bad("lists no SHA256 index hashes".into()));
    }
    Ok(Release {
        codename: field(&p, "Codename").unwrap_or("").to_string(),
        date,
        sha256,
    })
}

/// RFC 2822-style dates as archives write them (`Sat, 10 May 2025
/// 09:04:05 UTC`) to seconds since the epoch.
pub(crate) fn parse_date(s: &str) -> Option<u64> {
    let s = s.split_once(',').map_or(s, |(_, r)| r).trim();
    let w: Vec<&str> = s.split_whitespace().collect();
    let [d, mon, y, hms, ..] = w[..] else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == mon)? as i64 + 1;
    let d: i64 = d.parse().ok()?;
    let y: i64 = y.parse().ok()?;
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t[..] else { return None };
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_to_epoch_seconds() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(
            parse_date("Sat, 10 May 2025 09:04:05 UTC"),
            Some(1_746_867_845)
        );
        assert_eq!(parse_date("garbage"), None);
    }

    #[test]
    fn parse_refuses_expired_and_reads_hashes() {
        let h = "ab".repeat(32);
        let text = format!(
            "Suite: stable\nCodename: c\nDate: Sat, 10 May 2025 09:04:05 UTC\nValid-Until: Sat, 17 May 2025 09:04:05 UTC\nSHA256:\n {h} 10 main/binary-amd64/Packages.xz\n"
        );
        let r = parse(&text, "u/InRelease", 1_746_867_845).unwrap();
        assert_eq!(r.sha256["main/binary-amd64/Packages.xz"], (h.clone(), 10));
        let e = parse(&text, "u/InRelease", 1_800_000_000).unwrap_err();
        assert!(matches!(e, DebError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("u/InRelease"), "{e}");
    }

    #[test]
    fn the_host_archive_keyring_loads() {
        let s = super::super::sources::read_apt_dir(std::path::Path::new("/etc/apt")).unwrap();
        let keys = load_keys(&s[0].signed_by).unwrap();
        assert!(!keys.is_empty());
    }
}
