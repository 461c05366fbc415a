//! Image archives: one tar that is BOTH an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`) and a `docker load` archive
//! (`manifest.json` with `Config`/`RepoTags`/`Layers` pointing at those same
//! blobs), the layout Docker 25+ itself writes. Engine 20.10 ignores the OCI
//! parts and loads through `manifest.json` (it decompresses gzip layers
//! itself); OCI tools use `index.json`. Blobs are copied as they are, so
//! digests never change.
//!
//! The archive is deterministic: entries in a fixed order (layout files,
//! then blobs sorted by digest), GNU headers, mtime 0, mode 0644/0755,
//! uid/gid 0, no names.
//!
//! [`read_archive`] is the inverse: every blob is verified against its name
//! on the way into the store.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::digest::{canonical_json, hex_part};
use super::image::BuiltImage;
use super::spec::Digest;
use super::store::BlobStore;
use super::{OciError, media};

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h
}

/// Write `image` (every blob read from `store`) as a tar to `out`.
/// `repo_tags` (e.g. `["bottle/proxy:builtin"]`) name the image after
/// `docker load`; empty loads it untagged (by image ID).
pub fn write_archive<W: Write>(
    image: &BuiltImage,
    store: &BlobStore,
    repo_tags: &[String],
    out: W,
) -> Result<W, OciError> {
    let werr =
        |e: io::Error| OciError::io("cannot write the archive for", &image.manifest_digest, e);
    let blob_name =
        |d: &str| -> Result<String, OciError> { Ok(format!("blobs/sha256/{}", hex_part(d)?)) };

    let docker_manifest = json!([{
        "Config": blob_name(&image.config_digest)?,
        "RepoTags": repo_tags,
        "Layers": image.layers.iter().map(|l| blob_name(&l.digest)).collect::<Result<Vec<_>, _>>()?,
    }]);
    let mut annotations = serde_json::Map::new();
    if let Some(first) = repo_tags.first() {
        annotations.insert("io.containerd.image.name".into(), json!(first));
        if let Some((_, tag)) = first.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
        }
    }
    let mut desc = json!({
        "mediaType": media::OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": image.manifest.len(),
    });
    if !annotations.is_empty() {
        desc["annotations"] = Value::Object(annotations);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [desc],
    });

    let mut tar = tar::Builder::new(out);
    let small: [(&str, Vec<u8>); 3] = [
        ("index.json", canonical_json(&index)),
        ("manifest.json", canonical_json(&docker_manifest)),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ];
    for dir in ["blobs", "blobs/sha256"] {
        let mut h = header(0, 0o755, tar::EntryType::Directory);
        tar.append_data(&mut h, dir, io::empty()).map_err(werr)?;
    }
    let mut digests: BTreeSet<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    digests.insert(&image.config_digest);
    digests.insert(&image.manifest_digest);
    for digest in digests {
        // Verified as it is copied: a corrupt blob fails the write (and
        // the caller's temp file goes) before its last byte is written.
        let blob = store.open_blob(digest, "image blob")?;
        let mut h = header(blob.len(), 0o644, tar::EntryType::Regular);
        tar.append_data(&mut h, blob_name(digest)?, blob)
            .map_err(werr)?;
    }
    for (name, bytes) in small {
        let mut h = header(bytes.len() as u64, 0o644, tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes.as_slice())
            .map_err(werr)?;
    }
    tar.into_inner().map_err(werr)
}

/// Write the archive to `path` atomically (temp file beside it + rename).
pub fn write_archive_file(
    image: &BuiltImage,
    store: &BlobStore,
    repo_tags: &[String],
    path: &Path,
) -> Result<(), OciError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| OciError::io("cannot create a temp file in", dir, e))?;
    let w = io::BufWriter::new(temp);
    let w = write_archive(image, store, repo_tags, w)?;
    let temp = w
        .into_inner()
        .map_err(|e| OciError::io("cannot write", path, e.into_error()))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| OciError::io("cannot fsync", path, e))?;
    temp.persist(path)
        .map_err(|e| OciError::io("cannot rename into", path, e.error))?;
    crate::fsutil::sync_dir(dir);
    Ok(())
}

/// The whole archive in memory (for `bollard::Docker::import_image`, which
/// wants a body; sidecar images are a few MB).
pub fn archive_bytes(
    image: &BuiltImage,
    store: &BlobStore,
    repo_tags: &[String],
) -> Result<Vec<u8>, OciError> {
    write_archive(image, store, repo_tags, Vec::new())
}

/// Read an archive written by [`write_archive`] (or any OCI layout tar):
/// every `blobs/sha256/<hex>` entry goes into the store after its digest is
/// checked; returns the manifest digests `index.json` names.
pub fn read_archive<R: Read>(
    input: R,
    store: &BlobStore,
    shown: &Path,
) -> Result<Vec<Digest>, OciError> {
    let rerr = |e: io::Error| OciError::io("cannot read archive", shown, e);
    let mut ar = tar::Archive::new(input);
    let mut index: Option<Vec<u8>> = None;
    for entry in ar.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(rerr)?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            let mut b = Vec::new();
            entry.read_to_end(&mut b).map_err(rerr)?;
            index = Some(b);
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            hex_part(&digest)?;
            if store.has(&digest) {
                continue;
            }
            let mut w = store.writer()?;
            io::copy(&mut entry, &mut w).map_err(rerr)?;
            w.commit(Some(&digest)).map_err(|e| match e {
                OciError::DigestMismatch {
                    expected, actual, ..
                } => OciError::DigestMismatch {
                    what: format!("{path} in {}", shown.display()),
                    expected,
                    actual,
                },
                other => other,
            })?;
        }
    }
    let index = index.ok_or_else(|| OciError::Unsupported {
        what: shown.display().to_string(),
        reason: "has no index.json; it is not an OCI image layout archive".into(),
    })?;
    let v: Value = serde_json::from_slice(&index).map_err(|e| OciError::Json {
        what: format!("index.json in {}", shown.display()),
        source: e,
    })?;
    let mut out = Vec::new();
    for m in v
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(d) = m.get("digest").and_then(Value::as_str) {
            hex_part(d)?;
            if !store.has(d) {
                return Err(OciError::MissingBlob {
                    digest: d.to_string(),
                    what: format!("manifest named by index.json in {}", shown.display()),
                    store: store.root().to_path_buf(),
                });
            }
            out.push(d.to_string());
        }
    }
    Ok(out)
}

/// Open and read an archive file.
pub fn read_archive_file(path: &Path, store: &BlobStore) -> Result<Vec<Digest>, OciError> {
    let f = File::open(path).map_err(|e| OciError::io("cannot open", path, e))?;
    read_archive(io::BufReader::new(f), store, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::build;
    use crate::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};

    fn image(store: &BlobStore) -> BuiltImage {
        let spec = ImageSpec {
            base: Base::Scratch,
            layers: vec![LayerSpec {
                name: "l".into(),
                entries: vec![Entry {
                    path: "a".into(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    kind: EntryKind::File(FileSource::Bytes(b"a".to_vec())),
                }],
            }],
            config: ConfigSpec::default(),
            mtime: 0,
        };
        build(&spec, store).unwrap()
    }

    #[test]
    fn archive_is_deterministic_and_round_trips() {
        let d1 = tempfile::tempdir().unwrap();
        let s1 = BlobStore::open(d1.path()).unwrap();
        let img = image(&s1);
        let tags = vec!["bottle/x:1".to_string()];
        let a = archive_bytes(&img, &s1, &tags).unwrap();
        assert_eq!(a, archive_bytes(&img, &s1, &tags).unwrap());
        let d2 = tempfile::tempdir().unwrap();
        let s2 = BlobStore::open(d2.path()).unwrap();
        let got = read_archive(a.as_slice(), &s2, Path::new("mem.tar")).unwrap();
        assert_eq!(got, vec![img.manifest_digest.clone()]);
        assert_eq!(
            BuiltImage::from_store(&img.manifest_digest, &s2)
                .unwrap()
                .config,
            img.config
        );
        // docker's manifest.json points at the same blobs.
        let mut ar = tar::Archive::new(a.as_slice());
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some("manifest.json") {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert!(s.contains(hex_part(&img.config_digest).unwrap()), "{s}");
                assert!(s.contains("bottle/x:1"), "{s}");
                found = true;
            }
        }
        assert!(found);
    }

    #[test]
    fn a_tampered_blob_is_refused() {
        let d1 = tempfile::tempdir().unwrap();
        let s1 = BlobStore::open(d1.path()).unwrap();
        let img = image(&s1);
        let mut a = archive_bytes(&img, &s1, &[]).unwrap();
        // Flip one byte inside the config blob's data (JSON text is ASCII).
        let needle = br#""architecture":"amd64""#;
        let pos = a.windows(needle.len()).position(|w| w == needle).unwrap();
        a[pos + 17] = b'X';
        let d2 = tempfile::tempdir().unwrap();
        let s2 = BlobStore::open(d2.path()).unwrap();
        let err = read_archive(a.as_slice(), &s2, Path::new("bad.tar")).unwrap_err();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
        assert!(!s2.has(&img.config_digest));
    }
}
