//! Local inputs (skills, prompt, files) as content: a walk of a folder into
//! entries sorted bytewise by relative path, with modes normalized, and the
//! hash over (relative path, normalized mode, content).
//!
//! Invariants: nothing about the host leaks into the hash or the entries
//! (no mtime, owner, umask, absolute path or directory-listing order); a
//! symlink is kept only when its target stays inside the walked folder;
//! device files, FIFOs and sockets are refused.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A walked folder (or a single file, with one entry whose `rel` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub entries: Vec<TreeEntry>,
    /// `sha256:<hex>` over the entries.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// `/`-separated path relative to the walked folder; empty for a single file.
    pub rel: String,
    /// 0o755 or 0o644: executable bits collapse to "executable or not", so
    /// the host's umask never changes a digest.
    pub mode: u32,
    pub kind: TreeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKind {
    Dir,
    File { path: PathBuf, sha256: String },
    Symlink(String),
}

/// Why a walk failed: the offending path inside the folder and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkError {
    pub rel: String,
    pub problem: String,
    pub help: String,
}

fn werr(rel: &str, problem: impl Into<String>, help: impl Into<String>) -> WalkError {
    WalkError {
        rel: rel.to_string(),
        problem: problem.into(),
        help: help.into(),
    }
}

/// Normalized permission bits for a regular file.
pub fn file_mode(meta: &fs::Metadata) -> u32 {
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Streamed sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Hash one regular file as a tree of one entry.
pub fn hash_single_file(path: &Path) -> Result<Tree, WalkError> {
    let meta = fs::metadata(path).map_err(|e| werr("", format!("cannot read: {e}"), ""))?;
    if !meta.is_file() {
        return Err(werr("", "is not a regular file", "name a file here"));
    }
    let sha = sha256_file(path).map_err(|e| werr("", format!("cannot read: {e}"), ""))?;
    let entries = vec![TreeEntry {
        rel: String::new(),
        mode: file_mode(&meta),
        kind: TreeKind::File {
            path: path.to_path_buf(),
            sha256: sha,
        },
    }];
    let hash = hash_entries(&entries);
    Ok(Tree { entries, hash })
}

/// Walk `dir` (which must be a folder) into sorted, normalized entries.
pub fn walk_dir(dir: &Path) -> Result<Tree, WalkError> {
    let mut entries = Vec::new();
    walk_into(dir, "", &mut entries)?;
    entries.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    let hash = hash_entries(&entries);
    Ok(Tree { entries, hash })
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Vec<TreeEntry>) -> Result<(), WalkError> {
    let shown = if prefix.is_empty() { "." } else { prefix };
    let rd = fs::read_dir(dir).map_err(|e| werr(shown, format!("cannot list folder: {e}"), ""))?;
    let mut names = Vec::new();
    for item in rd {
        let item = item.map_err(|e| werr(shown, format!("cannot list folder: {e}"), ""))?;
        names.push(item.file_name());
    }
    // The host's listing order must not matter.
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let Some(name_str) = name.to_str() else {
            return Err(werr(
                &format!("{prefix}{}", name.to_string_lossy()),
                "file name is not UTF-8",
                "rename the file",
            ));
        };
        let rel = format!("{prefix}{name_str}");
        let path = dir.join(&name);
        let meta =
            fs::symlink_metadata(&path).map_err(|e| werr(&rel, format!("cannot stat: {e}"), ""))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| werr(&rel, format!("cannot read symlink: {e}"), ""))?;
            let Some(target) = target.to_str().map(str::to_string) else {
                return Err(werr(&rel, "symlink target is not UTF-8", "fix the link"));
            };
            if !stays_inside(&rel, &target) {
                return Err(werr(
                    &rel,
                    format!("symlink to `{target}` points outside its folder"),
                    "copy the file into the folder, or name the outside folder explicitly in the manifest",
                ));
            }
            out.push(TreeEntry {
                rel,
                mode: 0o777,
                kind: TreeKind::Symlink(target),
            });
        } else if ft.is_dir() {
            out.push(TreeEntry {
                rel: rel.clone(),
                mode: 0o755,
                kind: TreeKind::Dir,
            });
            walk_into(&path, &format!("{rel}/"), out)?;
        } else if ft.is_file() {
            let sha =
                sha256_file(&path).map_err(|e| werr(&rel, format!("cannot read: {e}"), ""))?;
            out.push(TreeEntry {
                rel,
                mode: file_mode(&meta),
                kind: TreeKind::File { path, sha256: sha },
            });
        } else {
            return Err(werr(
                &rel,
                "is a device, FIFO or socket",
                "only regular files, folders and symlinks can go into an image",
            ));
        }
    }
    Ok(())
}

/// Whether a relative symlink at `link_rel` with `target` resolves, lexically,
/// to a path inside the walked folder. Absolute targets never do.
pub fn stays_inside(link_rel: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return false;
    }
    let mut stack: Vec<&str> = link_rel.split('/').collect();
    stack.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            p => stack.push(p),
        }
    }
    true
}

fn hash_entries(entries: &[TreeEntry]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        match &e.kind {
            TreeKind::Dir => h.update(format!("d {}\0{:o}\n", e.rel, e.mode)),
            TreeKind::File { sha256, .. } => {
                h.update(format!("f {}\0{:o}\0{sha256}\n", e.rel, e.mode))
            }
            TreeKind::Symlink(t) => h.update(format!("l {}\0{t}\n", e.rel)),
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_containment() {
        assert!(stays_inside("a", "b"));
        assert!(stays_inside("d/a", "../b"));
        assert!(!stays_inside("a", "../b"));
        assert!(!stays_inside("d/a", "../../b"));
        assert!(!stays_inside("a", "/etc/passwd"));
        assert!(stays_inside("d/e/a", "./../x/./y"));
    }

    #[test]
    fn hash_ignores_order_mtime_and_umask_but_not_content() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("sub")).unwrap();
        fs::write(a.path().join("sub/x"), "x").unwrap();
        fs::write(a.path().join("y"), "y").unwrap();
        // Reverse creation order and different permission bits in b.
        fs::write(b.path().join("y"), "y").unwrap();
        fs::create_dir(b.path().join("sub")).unwrap();
        fs::write(b.path().join("sub/x"), "x").unwrap();
        fs::set_permissions(b.path().join("y"), fs::Permissions::from_mode(0o600)).unwrap();
        let ta = walk_dir(a.path()).unwrap();
        let tb = walk_dir(b.path()).unwrap();
        assert_eq!(ta.hash, tb.hash);
        let rels: Vec<_> = ta.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["sub", "sub/x", "y"]);
        fs::set_permissions(b.path().join("y"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(walk_dir(b.path()).unwrap().hash, ta.hash);
        fs::set_permissions(b.path().join("y"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(b.path().join("sub/x"), "X").unwrap();
        assert_ne!(walk_dir(b.path()).unwrap().hash, ta.hash);
    }

    #[test]
    fn refuses_escaping_symlink() {
        let a = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../outside", a.path().join("l")).unwrap();
        let e = walk_dir(a.path()).unwrap_err();
        assert_eq!(e.rel, "l");
        assert!(e.problem.contains("outside"));
    }
}
