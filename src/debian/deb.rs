//! Unpacking one `.deb`: the outer `ar` archive, its `data.tar` (plain,
//! gzip, xz or zstd), to image entries.
//!
//! Invariants: paths are normalized to the merged-/usr layout Debian uses
//! since bookworm (`bin/x` → `usr/bin/x`, likewise `sbin`, `lib*`), with
//! relative symlink targets rewritten so they still point where the
//! package meant; hard links become copies; owners are root and modes are
//! left to the layer writer's normalization (setuid/setgid bits are
//! dropped); anything but files, folders, symlinks and hard links, or a
//! path or link that leaves the root, is an error naming the package.
//! Maintainer scripts are never read.

use std::collections::BTreeMap;
use std::io::Read;

use super::DebError;
use crate::oci::spec::{Entry, EntryKind, FileSource};

/// Top-level folders that are symlinks into `usr/` in a merged-/usr image.
pub(crate) const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Entries of `deb` (the `.deb` bytes), keyed by image path, and the text
/// of its `control` file.
pub(crate) fn unpack(deb: &[u8], pkg: &str) -> Result<(BTreeMap<String, Entry>, String), DebError> {
    let bad = |problem: String| DebError::Deb {
        package: pkg.to_string(),
        problem,
    };
    let mut ar = ar::Archive::new(deb);
    let (mut data, mut control) = (None, None);
    while let Some(member) = ar.next_entry() {
        let mut member = member.map_err(|e| bad(format!("not an ar archive: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier()).to_string();
        let name = name.trim_end_matches('/').to_string();
        if !name.starts_with("data.tar") && !name.starts_with("control.tar") {
            continue;
        }
        let mut raw = Vec::new();
        member
            .read_to_end(&mut raw)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let tar = decompress(&name, &raw).map_err(|e| bad(format!("{name}: {e}")))?;
        if name.starts_with("data.tar") {
            data = Some(entries(&tar).map_err(|e| bad(format!("{name}: {e}")))?);
        } else {
            control = Some(control_text(&tar).map_err(|e| bad(format!("{name}: {e}")))?);
        }
    }
    match (data, control) {
        (Some(d), Some(c)) => Ok((d, c)),
        (None, _) => Err(bad("has no data.tar member".into())),
        (_, None) => Err(bad("has no control.tar member".into())),
    }
}

fn control_text(tar_bytes: &[u8]) -> Result<String, String> {
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let p = e.path().map_err(|e| e.to_string())?;
        if p.to_str().map(|p| p.trim_start_matches("./")) == Some("control") {
            let mut s = String::new();
            e.read_to_string(&mut s).map_err(|e| e.to_string())?;
            return Ok(s);
        }
    }
    Err("no `control` file".into())
}

fn decompress(name: &str, raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    let ext = name.rsplit_once(".tar").map_or("", |(_, e)| e);
    match ext {
        "" => out.extend_from_slice(raw),
        ".gz" => {
            flate2::read::GzDecoder::new(raw)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        ".xz" => {
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(raw), &mut out)
                .map_err(|e| e.to_string())?;
        }
        ".zst" => {
            ruzstd::decoding::StreamingDecoder::new(raw)
                .map_err(|e| e.to_string())?
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        other => return Err(format!("compression `{other}` is not supported")),
    }
    Ok(out)
}

/// `./bin/ls` → `usr/bin/ls`; `None` for the root itself.
fn image_path(raw: &str) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("entry `{raw}` leaves the root")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if MERGED.contains(&parts[0]) {
        parts.insert(0, "usr");
    }
    Ok(Some(parts.join("/")))
}

/// `bin/x` → `usr/bin/x` (likewise the other [`MERGED`] folders): where a
/// path of a recipe lands in a merged-/usr image, so it never shadows the
/// `bin` → `usr/bin` link with a folder.
pub(crate) fn merged_usr(path: &str) -> String {
    match path.split_once('/') {
        Some((top, _)) if MERGED.contains(&top) => format!("usr/{path}"),
        _ => path.to_string(),
    }
}

/// Absolute, lexically normalized form of `target` seen from `dir`
/// (an original, not yet merged, folder of the package).
fn absolute(dir: &str, target: &str) -> Option<String> {
    let mut stack: Vec<&str> = dir
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            c => stack.push(c),
        }
    }
    Some(format!("/{}", stack.join("/")))
}

fn entries(tar_bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let raw = e.path().map_err(|e| e.to_string())?;
        let raw = raw
            .to_str()
            .ok_or("an entry name is not UTF-8")?
            .to_string();
        let Some(path) = image_path(&raw)? else {
            continue;
        };
        if MERGED.contains(&path.as_str()) {
            // A package shipping the merged-/usr links itself (base-files
            // in later releases): the builder makes them.
            continue;
        }
        let mode = e.header().mode().unwrap_or(0o644);
        let kind = match e.header().entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::with_capacity(e.size() as usize);
                e.read_to_end(&mut buf).map_err(|e| e.to_string())?;
                EntryKind::File(FileSource::Bytes(buf))
            }
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .and_then(|t| t.to_str().map(str::to_string))
                    .ok_or_else(|| format!("symlink `{raw}` has no UTF-8 target"))?;
                let moved =
                    !raw.trim_start_matches("./").starts_with("usr/") && path.starts_with("usr/");
                let t = if moved && !t.starts_with('/') && t.split('/').any(|c| c == "..") {
                    let dir = raw.rsplit_once('/').map_or("", |(d, _)| d);
                    absolute(dir, &t)
                        .ok_or_else(|| format!("symlink `{raw}` -> `{t}` leaves the root"))?
                } else {
                    t
                };
                EntryKind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .and_then(|t| t.to_str().map(str::to_string))
                    .ok_or_else(|| format!("hard link `{raw}` has no UTF-8 target"))?;
                let tp = image_path(&t)?.unwrap_or_default();
                match out.get(&tp) {
                    Some(Entry {
                        kind: EntryKind::File(f),
                        ..
                    }) => EntryKind::File(f.clone()),
                    _ => {
                        return Err(format!(
                            "hard link `{raw}` -> `{t}`: no such file before it"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "entry `{raw}` has type {other:?}; only files, folders and links are unpacked"
                ));
            }
        };
        out.insert(
            path.clone(),
            Entry {
                path,
                mode: mode & 0o7777,
                uid: 0,
                gid: 0,
                kind,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.deb` whose data.tar has `files` (path, content), `links`
    /// (path, target), compressed as `comp` (`""`, `gz`, `xz`, `zst`).
    pub(crate) fn make_deb(files: &[(&str, &[u8])], links: &[(&str, &str)], comp: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(if p.contains("bin/") { 0o4755 } else { 0o644 });
            h.set_cksum();
            b.append_data(&mut h, p, *d).unwrap();
        }
        for (p, t) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, p, t).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let data = match comp {
            "" => tar,
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, &tar).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut &tar[..], &mut out).unwrap();
                out
            }
            "zst" => ruzstd::encoding::compress_to_vec(
                &tar[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            _ => unreachable!(),
        };
        let name = if comp.is_empty() {
            "data.tar".to_string()
        } else {
            format!("data.tar.{comp}")
        };
        let mut ar = ar::Builder::new(Vec::new());
        let mut c = tar::Builder::new(Vec::new());
        let ctl = b"Package: t\nVersion: 1\nArchitecture: amd64\nDescription: test\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(ctl.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        c.append_data(&mut h, "./control", &ctl[..]).unwrap();
        let ctl_tar = c.into_inner().unwrap();
        for (n, d) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar", &ctl_tar[..]),
            (name.as_str(), &data[..]),
        ] {
            let h = ar::Header::new(n.as_bytes().to_vec(), d.len() as u64);
            ar.append(&h, d).unwrap();
        }
        ar.into_inner().unwrap()
    }

    #[test]
    fn unpacks_every_compression_into_merged_usr() {
        for comp in ["", "gz", "xz", "zst"] {
            let deb = make_deb(
                &[("./bin/tool", b"x"), ("./usr/share/doc/t/c", b"d")],
                &[
                    ("./lib/x86_64-linux-gnu/libz.so", "../../usr/lib/z"),
                    ("./bin/sh", "tool"),
                ],
                comp,
            );
            let (m, control) = unpack(&deb, "t").unwrap();
            assert!(control.starts_with("Package: t\n"));
            let tool = &m["usr/bin/tool"];
            assert!(
                matches!(&tool.kind, EntryKind::File(FileSource::Bytes(b)) if b == b"x"),
                "{comp}"
            );
            assert_eq!(m["usr/bin/sh"].kind, EntryKind::Symlink("tool".into()));
            assert_eq!(
                m["usr/lib/x86_64-linux-gnu/libz.so"].kind,
                EntryKind::Symlink("/usr/lib/z".into()),
                "relative link from a moved folder keeps pointing at the same file"
            );
            assert!(m.contains_key("usr/share/doc/t/c"));
        }
    }

    #[test]
    fn refuses_escapes_and_non_debs() {
        let deb = make_deb(&[], &[("./lib/x", "../../../../etc")], "");
        let e = unpack(&deb, "evil").unwrap_err();
        assert!(e.to_string().contains("evil"), "{e}");
        let e = unpack(b"not an ar", "junk").unwrap_err();
        assert!(e.to_string().contains("junk"), "{e}");
    }
}
