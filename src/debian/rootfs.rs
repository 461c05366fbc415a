//! From pinned `.deb` files to image layers, doing deterministically what
//! the maintainer scripts an agent depends on would have done.
//!
//! Grouping: each package goes to one of 16 layers, `debian:<h>`, where
//! `<h>` is the first hex digit of the SHA-256 of its name; so the layer
//! count never exceeds 17 and adding or updating one package changes one
//! layer. Packages within a layer are applied in name order (a path two
//! packages ship keeps the first). A last layer, `debian:system`, holds
//! what the builder makes instead of scripts:
//! - the merged-/usr links (`bin`, `sbin`, `lib`, … → `usr/…`);
//! - `/var/lib/dpkg/status`, one paragraph per locked package, copied from
//!   the `.deb`'s own `control` with `Status: install ok installed`, so
//!   `dpkg -l` and scanners see exactly the locked set;
//! - `/etc/ssl/certs/ca-certificates.crt` when `ca-certificates` is locked:
//!   the certificates under `/usr/share/ca-certificates` in path order,
//!   then the recipe's `/usr/local/share/ca-certificates/*.crt`, as
//!   `update-ca-certificates` concatenates them;
//! - the alternatives links of [`ALTERNATIVES`] (first candidate present),
//!   pointing straight at the binary.
//!
//! `/etc/passwd` and `/etc/group` come from the agent's `config` layer as
//! for every bottle (root, agent, nobody); no script adds system users.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::DebError;
use super::deb::{self, MERGED};
use crate::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};

/// `(link, candidates in priority order)`, as the packages' postinst
/// scripts register them with `update-alternatives`.
pub(crate) const ALTERNATIVES: &[(&str, &[&str])] = &[
    (
        "usr/bin/awk",
        &["usr/bin/gawk", "usr/bin/mawk", "usr/bin/original-awk"],
    ),
    (
        "usr/bin/nawk",
        &["usr/bin/gawk", "usr/bin/mawk", "usr/bin/original-awk"],
    ),
    ("usr/bin/pager", &["usr/bin/less", "usr/bin/more"]),
    ("usr/bin/which", &["usr/bin/which.debianutils"]),
    (
        "usr/bin/editor",
        &["usr/bin/vim.basic", "usr/bin/nano", "usr/bin/vim.tiny"],
    ),
    (
        "usr/bin/vi",
        &["usr/bin/vim.basic", "usr/bin/vim.tiny", "usr/bin/nvi"],
    ),
];

/// One unpacked package.
pub(crate) struct Unpacked {
    pub name: String,
    pub control: String,
    pub entries: BTreeMap<String, Entry>,
}

fn bucket(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    format!("debian:{:x}", h[0] >> 4)
}

fn bytes(path: &str, b: Vec<u8>) -> Entry {
    Entry {
        path: path.to_string(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        kind: EntryKind::File(FileSource::Bytes(b)),
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.to_string(),
        mode: 0o777,
        uid: 0,
        gid: 0,
        kind: EntryKind::Symlink(target.to_string()),
    }
}

/// Layers for these packages (sorted by name); `local_ca` are the recipe's
/// extra certificates `(file name, PEM)`.
pub(crate) fn layers(pkgs: &[Unpacked], local_ca: &[(String, Vec<u8>)]) -> Vec<LayerSpec> {
    let mut groups: BTreeMap<String, BTreeMap<String, Entry>> = BTreeMap::new();
    let mut all: BTreeMap<&str, &Entry> = BTreeMap::new();
    for p in pkgs {
        let g = groups.entry(bucket(&p.name)).or_default();
        for (path, e) in &p.entries {
            g.entry(path.clone()).or_insert_with(|| e.clone());
            all.entry(path).or_insert(e);
        }
    }
    let mut out: Vec<LayerSpec> = groups
        .into_iter()
        .map(|(name, m)| LayerSpec {
            name,
            entries: m.into_values().collect(),
        })
        .collect();
    let mut sys: BTreeMap<String, Entry> = BTreeMap::new();
    for m in MERGED {
        let target = format!("usr/{m}");
        if matches!(*m, "bin" | "sbin" | "lib") || all.keys().any(|p| p.starts_with(&target)) {
            sys.insert((*m).to_string(), link(m, &target));
        }
    }
    sys.insert(
        "var/lib/dpkg/status".into(),
        bytes("var/lib/dpkg/status", status(pkgs)),
    );
    sys.insert(
        "var/lib/dpkg/available".into(),
        bytes("var/lib/dpkg/available", vec![]),
    );
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        sys.insert(
            d.into(),
            Entry {
                path: d.into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: EntryKind::Dir,
            },
        );
    }
    if pkgs.iter().any(|p| p.name == "ca-certificates") {
        let path = "etc/ssl/certs/ca-certificates.crt";
        sys.insert(path.into(), bytes(path, ca_bundle(&all, local_ca)));
    }
    for (l, cands) in ALTERNATIVES {
        if all.contains_key(l) {
            continue;
        }
        if let Some(c) = cands.iter().find(|c| {
            matches!(
                all.get(**c),
                Some(Entry {
                    kind: EntryKind::File(_) | EntryKind::Symlink(_),
                    ..
                })
            )
        }) {
            sys.insert((*l).to_string(), link(l, &format!("/{c}")));
        }
    }
    out.push(LayerSpec {
        name: "debian:system".into(),
        entries: sys.into_values().collect(),
    });
    out
}

/// `/var/lib/dpkg/status`: each package's control paragraph with
/// `Status: install ok installed` after `Package`, in name order.
fn status(pkgs: &[Unpacked]) -> Vec<u8> {
    let mut out = String::new();
    for p in pkgs {
        for line in p.control.trim_end().lines() {
            out.push_str(line);
            out.push('\n');
            if line.starts_with("Package:") {
                out.push_str("Status: install ok installed\n");
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

fn ca_bundle(all: &BTreeMap<&str, &Entry>, local: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |b: &[u8]| {
        out.extend_from_slice(b);
        if !b.ends_with(b"\n") {
            out.push(b'\n');
        }
    };
    for (p, e) in all.range("usr/share/ca-certificates/"..) {
        if !p.starts_with("usr/share/ca-certificates/") {
            break;
        }
        if let (true, EntryKind::File(FileSource::Bytes(b))) = (p.ends_with(".crt"), &e.kind) {
            push(b);
        }
    }
    let mut local: Vec<&(String, Vec<u8>)> = local.iter().collect();
    local.sort();
    for (_, b) in local {
        push(b);
    }
    out
}

/// Unpack one cached `.deb` (already hash-checked against its pin).
pub(crate) fn unpack_file(name: &str, path: &std::path::Path) -> Result<Unpacked, DebError> {
    let b = std::fs::read(path).map_err(|e| DebError::Deb {
        package: name.to_string(),
        problem: format!("cannot read {}: {e}", path.display()),
    })?;
    let (entries, control) = deb::unpack(&b, name)?;
    Ok(Unpacked {
        name: name.to_string(),
        control,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, files: &[(&str, &[u8])]) -> Unpacked {
        let entries = files
            .iter()
            .map(|(p, b)| ((*p).to_string(), bytes(p, b.to_vec())))
            .collect();
        Unpacked {
            name: name.into(),
            control: format!("Package: {name}\nVersion: 1\nArchitecture: amd64\nDescription: d\n"),
            entries,
        }
    }

    #[test]
    fn system_layer_has_status_bundle_links_and_alternatives() {
        let pkgs = [
            pkg(
                "ca-certificates",
                &[
                    ("usr/share/ca-certificates/mozilla/B.crt", b"B"),
                    ("usr/share/ca-certificates/mozilla/A.crt", b"A\n"),
                ],
            ),
            pkg("mawk", &[("usr/bin/mawk", b"m")]),
        ];
        let ls = layers(&pkgs, &[("z.crt".into(), b"LOCAL".to_vec())]);
        assert!(ls.len() <= 17);
        let sys = ls.last().unwrap();
        assert_eq!(sys.name, "debian:system");
        let get = |p: &str| {
            sys.entries
                .iter()
                .find(|e| e.path == p)
                .unwrap()
                .kind
                .clone()
        };
        assert_eq!(
            get("etc/ssl/certs/ca-certificates.crt"),
            EntryKind::File(FileSource::Bytes(b"A\nB\nLOCAL\n".to_vec()))
        );
        assert_eq!(
            get("usr/bin/awk"),
            EntryKind::Symlink("/usr/bin/mawk".into())
        );
        assert_eq!(get("bin"), EntryKind::Symlink("usr/bin".into()));
        let EntryKind::File(FileSource::Bytes(st)) = get("var/lib/dpkg/status") else {
            panic!()
        };
        let st = String::from_utf8(st).unwrap();
        assert!(
            st.starts_with("Package: ca-certificates\nStatus: install ok installed\n"),
            "{st}"
        );
        assert_eq!(st.matches("Status: install ok installed").count(), 2);
        assert!(
            !sys.entries.iter().any(|e| e.path == "lib64"),
            "no lib64 link without lib64 files"
        );
        // Same packages, same layers.
        assert_eq!(layers(&pkgs, &[("z.crt".into(), b"LOCAL".to_vec())]), ls);
    }
}
