//! Explaining a digest mismatch (`check`): which layer differs, and inside
//! a layer which files differ. DESIGN.md: "A mismatch in `check` names the
//! input or file that differs."
//!
//! Layers are matched by name (spec names are stable), falling back to
//! position. File-level diffs need both layer blobs in the store; they
//! decompress and compare entry by entry (type, mode, owner, mtime, link
//! target, content hash), never trusting sizes alone.

use std::collections::BTreeMap;
use std::io::{self, Read};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use super::OciError;
use super::image::LayerRef;
use super::store::BlobStore;

/// One line per layer that differs between what a lockfile expects and what
/// a rebuild produced, e.g. ``layer `skill:review`: sha256:ab… (lock) ≠ sha256:cd… (rebuilt)``.
pub fn diff_layer_refs(expected: &[LayerRef], actual: &[LayerRef]) -> Vec<String> {
    let mut out = Vec::new();
    let by_name = |v: &[LayerRef]| -> BTreeMap<String, LayerRef> {
        v.iter().map(|l| (l.name.clone(), l.clone())).collect()
    };
    let names_unique = |v: &[LayerRef]| by_name(v).len() == v.len();
    if names_unique(expected) && names_unique(actual) {
        let e = by_name(expected);
        let a = by_name(actual);
        for l in expected {
            match a.get(&l.name) {
                None => out.push(format!(
                    "layer `{}`: in the lock, not in the rebuild",
                    l.name
                )),
                Some(x) if x.digest != l.digest => out.push(format!(
                    "layer `{}`: {} (lock) != {} (rebuilt)",
                    l.name, l.digest, x.digest
                )),
                Some(_) => {}
            }
        }
        for l in actual {
            if !e.contains_key(&l.name) {
                out.push(format!(
                    "layer `{}`: in the rebuild, not in the lock",
                    l.name
                ));
            }
        }
        let order_e: Vec<&str> = expected.iter().map(|l| l.name.as_str()).collect();
        let order_a: Vec<&str> = actual.iter().map(|l| l.name.as_str()).collect();
        if out.is_empty() && order_e != order_a {
            out.push(format!(
                "layer order differs: {order_e:?} (lock) != {order_a:?} (rebuilt)"
            ));
        }
    } else {
        for i in 0..expected.len().max(actual.len()) {
            match (expected.get(i), actual.get(i)) {
                (Some(e), Some(a)) if e.digest != a.digest => out.push(format!(
                    "layer {i} (`{}`): {} (lock) != {} (rebuilt)",
                    a.name, e.digest, a.digest
                )),
                (Some(e), None) => out.push(format!(
                    "layer {i} (`{}`): missing from the rebuild",
                    e.name
                )),
                (None, Some(a)) => out.push(format!("layer {i} (`{}`): not in the lock", a.name)),
                _ => {}
            }
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
struct EntryInfo {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    size: u64,
    sha256: String,
}

fn entries(store: &BlobStore, digest: &str) -> Result<BTreeMap<String, EntryInfo>, OciError> {
    let path = store.blob_path(digest)?;
    let rerr = |e: io::Error| OciError::io("cannot read layer", &path, e);
    let file = store.open_blob(digest, "layer")?;
    let mut ar = tar::Archive::new(GzDecoder::new(io::BufReader::new(file)));
    let mut out = BTreeMap::new();
    for entry in ar.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        let name = entry.path().map_err(rerr)?.to_string_lossy().into_owned();
        let h = entry.header();
        let info_head = (
            h.entry_type().as_byte(),
            h.mode().unwrap_or(0),
            h.uid().unwrap_or(0),
            h.gid().unwrap_or(0),
            h.mtime().unwrap_or(0),
            entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.to_string_lossy().into_owned()),
        );
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let k = entry.read(&mut buf).map_err(rerr)?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            size += k as u64;
        }
        let (kind, mode, uid, gid, mtime, link) = info_head;
        out.insert(
            name,
            EntryInfo {
                kind,
                mode,
                uid,
                gid,
                mtime,
                link,
                size,
                sha256: hex::encode(hasher.finalize()),
            },
        );
    }
    // The tar reader stops at the end-of-archive marker: verify the rest.
    ar.into_inner().into_inner().into_inner().finish()?;
    Ok(out)
}

/// The files that differ between two layer blobs in the store, one line
/// each (`path: content differs`, `path: mode 644 -> 755`, `path: only in
/// the lock`, …). Both blobs must be in the store.
pub fn diff_layer_blobs(
    store: &BlobStore,
    expected: &str,
    actual: &str,
) -> Result<Vec<String>, OciError> {
    let e = entries(store, expected)?;
    let a = entries(store, actual)?;
    let mut out = Vec::new();
    for (path, x) in &e {
        let Some(y) = a.get(path) else {
            out.push(format!("{path}: only in the lock's layer"));
            continue;
        };
        let mut what = Vec::new();
        if x.kind != y.kind {
            what.push(format!("type {} -> {}", x.kind as char, y.kind as char));
        }
        if x.mode != y.mode {
            what.push(format!("mode {:o} -> {:o}", x.mode, y.mode));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            what.push(format!("owner {}:{} -> {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if x.mtime != y.mtime {
            what.push(format!("mtime {} -> {}", x.mtime, y.mtime));
        }
        if x.link != y.link {
            what.push(format!("link target {:?} -> {:?}", x.link, y.link));
        }
        if x.sha256 != y.sha256 {
            what.push(format!("content differs ({} -> {} bytes)", x.size, y.size));
        }
        if !what.is_empty() {
            out.push(format!("{path}: {}", what.join(", ")));
        }
    }
    for path in a.keys() {
        if !e.contains_key(path) {
            out.push(format!("{path}: only in the rebuilt layer"));
        }
    }
    if out.is_empty() && expected != actual {
        out.push("same files, different bytes (tar headers or compression differ)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::layer::build_layer;
    use crate::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};

    fn layer(files: &[(&str, &[u8], u32)]) -> LayerSpec {
        LayerSpec {
            name: "skill:x".into(),
            entries: files
                .iter()
                .map(|(p, b, m)| Entry {
                    path: p.to_string(),
                    mode: *m,
                    uid: 0,
                    gid: 0,
                    kind: EntryKind::File(FileSource::Bytes(b.to_vec())),
                })
                .collect(),
        }
    }

    #[test]
    fn names_the_files_that_differ() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = build_layer(
            &layer(&[
                ("s/a", b"1", 0o644),
                ("s/b", b"2", 0o644),
                ("s/c", b"3", 0o644),
            ]),
            0,
            &store,
        )
        .unwrap();
        let b = build_layer(
            &layer(&[
                ("s/a", b"1", 0o644),
                ("s/b", b"X", 0o755),
                ("s/d", b"4", 0o644),
            ]),
            0,
            &store,
        )
        .unwrap();
        let d = diff_layer_blobs(&store, &a.digest, &b.digest).unwrap();
        assert_eq!(
            d,
            vec![
                "s/b: mode 644 -> 755, content differs (1 -> 1 bytes)".to_string(),
                "s/c: only in the lock's layer".to_string(),
                "s/d: only in the rebuilt layer".to_string(),
            ]
        );
        assert!(
            diff_layer_blobs(&store, &a.digest, &a.digest)
                .unwrap()
                .is_empty()
        );

        let refs = |l: &crate::oci::layer::Layer| LayerRef {
            name: l.name.clone(),
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        };
        let lines = diff_layer_refs(&[refs(&a)], &[refs(&b)]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("layer `skill:x`: "), "{lines:?}");
    }
}
