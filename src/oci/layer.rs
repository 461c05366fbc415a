//! Deterministic layers: a [`LayerSpec`] becomes a gzipped tar whose bytes
//! depend on nothing but the spec (and the pinned compressor version).
//!
//! Rules (DESIGN.md "Determinism rules"), each for a reason:
//! - entries sorted bytewise by path, so `read_dir` order never leaks in;
//! - every parent directory emitted explicitly (0755, uid/gid 0 unless the
//!   spec lists it), so extraction never invents one with the host's umask;
//! - mtime from the spec; uid/gid from the entry; uname/gname empty; no
//!   atime/ctime/xattrs/pax records: nothing from the building host;
//! - modes normalized: files 0644, or 0755 when any exec bit is set; dirs
//!   0755 (0o1777 kept for world-writable sticky dirs such as `tmp`);
//!   symlinks 0777. The host umask therefore never matters;
//! - GNU headers throughout (long names via `././@LongLink`), chosen once;
//! - no device files, fifos or sockets; symlink targets must stay inside the
//!   image root (checked lexically);
//! - gzip: no file name, mtime 0, OS byte 255, level 6, zlib-rs backend.
//!   zlib-rs picks SIMD code by CPU only for `compare256`, `slide_hash` and
//!   checksums, which compute the same values on every path, so the bytes
//!   do not depend on the CPU; a C zlib switched on by another crate's
//!   feature WOULD change them (the golden test would catch it).
//!
//! Building streams: file contents go from disk through tar, the diff_id
//! hasher, gzip and the digest hasher into a temp blob, never held whole in
//! memory. A content hash of the spec (file contents included) keys a cache
//! in the blob store so an unchanged layer is not recompressed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

use super::digest::Sha256Writer;
use super::spec::{Digest, EntryKind, FileSource, LayerSpec};
use super::store::{BlobStore, CachedLayer};
use super::{OciError, media};

/// Changes whenever the bytes a spec produces could change (tar writer,
/// compressor or its settings), so old cache entries are not trusted.
const FORMAT: &str = "bottle-layer-v1;tar=gnu;gzip=zlib-rs-0.6,level=6,os=255";

/// The gzip settings every layer uses (one place, so the fingerprint and
/// the real builds cannot drift apart).
fn gzip<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, Compression::new(6))
}

/// Digest of a fixed sample layer written by this binary's tar writer and
/// compressor. It is part of the layer cache key, so a dependency update
/// that changes the output bytes (a new zlib-rs, a new tar crate) also
/// invalidates cached layers instead of silently mixing old and new bytes.
fn writer_fingerprint() -> Result<&'static str, OciError> {
    static FP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(fp) = FP.get() {
        return Ok(fp);
    }
    let mut text = Vec::with_capacity(96 * 1024);
    let mut x: u32 = 1;
    while text.len() < 96 * 1024 {
        // xorshift: compressible but not trivial, so match finding matters.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        text.extend_from_slice(
            ["alpha ", "beta ", "gamma ", "delta\n"][(x % 4) as usize].as_bytes(),
        );
        text.push(b'a' + (x % 26) as u8);
    }
    let sample = LayerSpec {
        name: "fingerprint".into(),
        entries: vec![
            crate::oci::spec::Entry {
                path: format!("{}/f", "d".repeat(120)),
                mode: 0o755,
                uid: 1000,
                gid: 1000,
                kind: EntryKind::File(FileSource::Bytes(text)),
            },
            crate::oci::spec::Entry {
                path: "l".into(),
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: EntryKind::Symlink("d".into()),
            },
        ],
    };
    let planned = plan(&sample)?;
    let gz = write_planned(&sample.name, &planned, 0, gzip(Vec::new()))?;
    let bytes = gz
        .finish()
        .map_err(|e| OciError::io("cannot compress", "the writer fingerprint sample", e))?;
    Ok(FP.get_or_init(|| crate::oci::digest::sha256_digest(&bytes)))
}

/// A built layer; its blob is in the store under `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    /// sha256 of the compressed blob (`.tar.gz`).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (goes in the config's `rootfs`).
    pub diff_id: Digest,
    /// Size in bytes of the compressed blob.
    pub size: u64,
    pub media_type: String,
    /// True when the layer came from the spec-hash cache without compressing.
    pub from_cache: bool,
}

/// One normalized entry, ready to write.
#[derive(Debug)]
struct Planned<'a> {
    kind: PlannedKind<'a>,
    mode: u32,
    uid: u64,
    gid: u64,
}

#[derive(Debug)]
enum PlannedKind<'a> {
    Dir,
    File(&'a FileSource),
    Symlink(&'a str),
}

/// Validate, normalize, add parents, sort. Keys are the in-archive paths.
fn plan(spec: &LayerSpec) -> Result<BTreeMap<String, Planned<'_>>, OciError> {
    let bad = |path: &str, reason| OciError::InvalidPath {
        layer: spec.name.clone(),
        path: path.to_string(),
        reason,
    };
    let mut planned: BTreeMap<String, Planned<'_>> = BTreeMap::new();
    for entry in &spec.entries {
        let path = entry.path.as_str();
        validate_path(path).map_err(|reason| bad(path, reason))?;
        let (kind, mode) = match &entry.kind {
            EntryKind::Dir => (
                PlannedKind::Dir,
                if entry.mode & 0o7777 == 0o1777 {
                    0o1777
                } else {
                    0o755
                },
            ),
            EntryKind::File(src) => (
                PlannedKind::File(src),
                if entry.mode & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                },
            ),
            EntryKind::Symlink(target) => {
                check_symlink(path, target).map_err(|()| OciError::SymlinkEscape {
                    layer: spec.name.clone(),
                    path: path.to_string(),
                    target: target.clone(),
                })?;
                (PlannedKind::Symlink(target), 0o777)
            }
        };
        let p = Planned {
            kind,
            mode,
            uid: entry.uid,
            gid: entry.gid,
        };
        if planned.insert(path.to_string(), p).is_some() {
            return Err(OciError::DuplicatePath {
                layer: spec.name.clone(),
                path: path.to_string(),
            });
        }
    }
    // Parents: explicit entries win; missing ones are root-owned 0755.
    let paths: Vec<String> = planned.keys().cloned().collect();
    for path in &paths {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            end += i + 1;
            match planned.get(parent) {
                Some(Planned {
                    kind: PlannedKind::Dir,
                    ..
                }) => {}
                Some(_) => return Err(bad(path, "a parent of this path is not a directory")),
                None => {
                    planned.insert(
                        parent.to_string(),
                        Planned {
                            kind: PlannedKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
            }
        }
    }
    Ok(planned)
}

fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.starts_with('/') {
        return Err("it must be relative to the image root (no leading `/`)");
    }
    if path.contains('\0') {
        return Err("it contains a NUL byte");
    }
    for c in path.split('/') {
        match c {
            "" => return Err("it has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return Err("it has a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// A symlink at `path` pointing at `target` must resolve (lexically) to a
/// place inside the root. Absolute targets are taken relative to the image
/// root, which is where the container sees them.
fn check_symlink(path: &str, target: &str) -> Result<(), ()> {
    if target.is_empty() || target.contains('\0') {
        return Err(());
    }
    let mut stack: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        parts
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                stack.pop().ok_or(())?;
            }
            name => stack.push(name),
        }
    }
    Ok(())
}

fn file_kind_name(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Open a file source and return its size, refusing anything but a regular
/// file (symlinks followed: the lock pinned the content, not the link).
fn open_source(layer: &str, entry_path: &str, src: &Path) -> Result<(File, u64), OciError> {
    let meta = fs::metadata(src).map_err(|e| OciError::io("cannot stat", src, e))?;
    if !meta.is_file() {
        return Err(OciError::NotRegularFile {
            layer: layer.to_string(),
            path: entry_path.to_string(),
            source_path: src.to_path_buf(),
            kind: file_kind_name(&meta.file_type()),
        });
    }
    let file = File::open(src).map_err(|e| OciError::io("cannot open", src, e))?;
    Ok((file, meta.len()))
}

/// Content hash of a planned layer: what the cache is keyed by.
fn spec_key(
    layer: &str,
    planned: &BTreeMap<String, Planned<'_>>,
    mtime: u64,
) -> Result<String, OciError> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(writer_fingerprint()?.as_bytes());
    h.update(format!("\0mtime={mtime}\n").as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    for (path, p) in planned {
        h.update(format!("{path}\0{:o}\0{}\0{}\0", p.mode, p.uid, p.gid).as_bytes());
        match p.kind {
            PlannedKind::Dir => h.update(b"d\n"),
            PlannedKind::Symlink(t) => {
                h.update(b"l\0");
                h.update(t.as_bytes());
                h.update(b"\n");
            }
            PlannedKind::File(FileSource::Bytes(b)) => {
                h.update(format!("f\0{}\0", b.len()).as_bytes());
                h.update(Sha256::digest(b));
                h.update(b"\n");
            }
            PlannedKind::File(FileSource::Path(src)) => {
                let (mut file, _) = open_source(layer, path, src)?;
                let mut fh = Sha256::new();
                let mut n = 0u64;
                loop {
                    let k = file
                        .read(&mut buf)
                        .map_err(|e| OciError::io("cannot read", src, e))?;
                    if k == 0 {
                        break;
                    }
                    fh.update(&buf[..k]);
                    n += k as u64;
                }
                h.update(format!("f\0{n}\0").as_bytes());
                h.update(fh.finalize());
                h.update(b"\n");
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Counts what a reader yields, so a file that shrank or grew while being
/// archived is caught instead of producing a tar whose header lies.
/// Read errors are re-labelled with the source path, because the tar writer
/// reports them as its own.
struct Counting<'a, R> {
    inner: R,
    n: u64,
    path: &'a Path,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", self.path.display()),
            )
        })?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Write the uncompressed tar of a layer to `out`. Exposed so tests and
/// `check` can look at exact bytes; [`build_layer`] uses it too.
pub fn write_tar<W: Write>(spec: &LayerSpec, mtime: u64, out: W) -> Result<W, OciError> {
    let planned = plan(spec)?;
    write_planned(&spec.name, &planned, mtime, out)
}

fn write_planned<W: Write>(
    layer: &str,
    planned: &BTreeMap<String, Planned<'_>>,
    mtime: u64,
    out: W,
) -> Result<W, OciError> {
    let werr = |e: io::Error| OciError::io("cannot write layer", format!("`{layer}`"), e);
    let mut tar = tar::Builder::new(out);
    for (path, p) in planned {
        let mut h = tar::Header::new_gnu();
        h.set_mode(p.mode);
        h.set_uid(p.uid);
        h.set_gid(p.gid);
        h.set_mtime(mtime);
        match p.kind {
            PlannedKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, path, io::empty()).map_err(werr)?;
            }
            PlannedKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, path, target).map_err(werr)?;
            }
            PlannedKind::File(FileSource::Bytes(bytes)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, path, bytes.as_slice())
                    .map_err(werr)?;
            }
            PlannedKind::File(FileSource::Path(src)) => {
                let (file, len) = open_source(layer, path, src)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                let mut reader = Counting {
                    inner: file.take(len),
                    n: 0,
                    path: src,
                };
                tar.append_data(&mut h, path, &mut reader).map_err(werr)?;
                let grew = reader
                    .inner
                    .into_inner()
                    .read(&mut [0u8; 1])
                    .map(|k| k > 0)
                    .unwrap_or(true);
                if reader.n != len || grew {
                    return Err(OciError::FileChanged {
                        layer: layer.to_string(),
                        source_path: src.clone(),
                        expected: len,
                        actual: reader.n + u64::from(grew),
                    });
                }
            }
        }
    }
    tar.into_inner().map_err(werr)
}

/// Build one layer into the store (or find it in the layer cache).
pub fn build_layer(spec: &LayerSpec, mtime: u64, store: &BlobStore) -> Result<Layer, OciError> {
    let planned = plan(spec)?;
    let key = spec_key(&spec.name, &planned, mtime)?;
    if let Some(c) = store.cached_layer(&key) {
        return Ok(Layer {
            name: spec.name.clone(),
            digest: c.digest,
            diff_id: c.diff_id,
            size: c.size,
            media_type: media::OCI_LAYER_GZIP.to_string(),
            from_cache: true,
        });
    }
    let blob = store.writer()?;
    let temp = blob.temp_path().to_path_buf();
    let gz = gzip(blob);
    let tar_out = write_planned(&spec.name, &planned, mtime, Sha256Writer::new(gz))?;
    let (gz, diff_id, _) = tar_out.finish();
    let blob = gz
        .finish()
        .map_err(|e| OciError::io("cannot write", &temp, e))?;
    let (digest, size) = blob.commit(None)?;
    let cached = CachedLayer {
        digest: digest.clone(),
        diff_id: diff_id.clone(),
        size,
    };
    store.remember_layer(&key, &cached)?;
    Ok(Layer {
        name: spec.name.clone(),
        digest,
        diff_id,
        size,
        media_type: media::OCI_LAYER_GZIP.to_string(),
        from_cache: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::spec::Entry;

    fn file(path: &str, bytes: &[u8], mode: u32) -> Entry {
        Entry {
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            kind: EntryKind::File(FileSource::Bytes(bytes.to_vec())),
        }
    }

    fn spec(entries: Vec<Entry>) -> LayerSpec {
        LayerSpec {
            name: "t".into(),
            entries,
        }
    }

    fn listing(spec: &LayerSpec) -> Vec<(String, u32, u8)> {
        let tar = write_tar(spec, 0, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(tar.as_slice());
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.entry_type().as_byte(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_sorted_parents_explicit_modes_normalized() {
        let s = spec(vec![
            file("b/z", b"1", 0o600),
            file("a-b", b"2", 0o700),
            file("a/x/y", b"3", 0o777),
        ]);
        let l = listing(&s);
        let names: Vec<_> = l.iter().map(|(p, m, t)| (p.as_str(), *m, *t)).collect();
        assert_eq!(
            names,
            vec![
                ("a", 0o755, b'5'),
                ("a-b", 0o755, b'0'),
                ("a/x", 0o755, b'5'),
                ("a/x/y", 0o755, b'0'),
                ("b", 0o755, b'5'),
                ("b/z", 0o644, b'0'),
            ]
        );
    }

    #[test]
    fn symlink_escapes_are_rejected() {
        for (path, target) in [
            ("a/l", "../../x"),
            ("l", ".."),
            ("l", "/../etc"),
            ("a/l", ""),
        ] {
            let s = spec(vec![Entry {
                path: path.into(),
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: EntryKind::Symlink(target.into()),
            }]);
            let err = write_tar(&s, 0, Vec::new()).unwrap_err();
            assert!(
                matches!(err, OciError::SymlinkEscape { .. }),
                "{path} -> {target}: {err}"
            );
        }
        for (path, target) in [("a/l", "../x"), ("bin/sh", "/bin/busybox"), ("l", "a/./b")] {
            check_symlink(path, target).unwrap();
        }
    }

    #[test]
    fn bad_paths_and_duplicates_are_rejected() {
        for p in ["", "/abs", "a//b", "a/", "a/../b", "./a"] {
            let err = write_tar(&spec(vec![file(p, b"", 0o644)]), 0, Vec::new()).unwrap_err();
            assert!(matches!(err, OciError::InvalidPath { .. }), "{p:?}: {err}");
        }
        let err = write_tar(
            &spec(vec![file("a", b"", 0o644), file("a", b"x", 0o644)]),
            0,
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::DuplicatePath { .. }));
        let err = write_tar(
            &spec(vec![file("a", b"", 0o644), file("a/b", b"x", 0o644)]),
            0,
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::InvalidPath { .. }));
    }

    #[test]
    fn device_files_are_rejected() {
        let s = spec(vec![Entry {
            path: "dev/null".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            kind: EntryKind::File(FileSource::Path("/dev/null".into())),
        }]);
        let err = write_tar(&s, 0, Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                OciError::NotRegularFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn long_paths_round_trip() {
        let long = format!("{}/f", "d".repeat(150));
        let l = listing(&spec(vec![file(&long, b"x", 0o644)]));
        assert_eq!(l.last().unwrap().0, long);
    }

    #[test]
    fn build_layer_is_cached_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let s = spec(vec![file("a/b", b"hello", 0o644)]);
        let first = build_layer(&s, 0, &store).unwrap();
        assert!(!first.from_cache);
        store.verify(&first.digest).unwrap();
        let second = build_layer(&s, 0, &store).unwrap();
        assert!(second.from_cache);
        assert_eq!(
            (first.digest, first.diff_id),
            (second.digest, second.diff_id)
        );
        let other = build_layer(&s, 1, &store).unwrap();
        assert!(!other.from_cache);
    }
}
