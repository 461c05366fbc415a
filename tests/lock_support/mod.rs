//! Helpers for the lock/check tests: copies of the example project in temp
//! folders (with knobs for everything that must not change a digest), and a
//! runner for the `bottle` binary with an isolated cache, HOME, TZ and umask.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The repository this test binary was built from.
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How a copy of the project differs from the original, for the
/// reproducibility tests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Variation {
    /// Create entries in reverse order.
    pub reverse: bool,
    /// Files 0600 / folders 0700 (what umask 077 gives), else 0644/0755.
    pub tight_modes: bool,
    /// Set every mtime to this many seconds since the epoch.
    pub mtime: Option<u64>,
}

/// A temp project holding copies of `agents/<agent>`, `images/` and the
/// agent's lockfile (when it exists).
pub(crate) struct Project {
    pub dir: tempfile::TempDir,
    root: PathBuf,
    pub cache: tempfile::TempDir,
    pub home: tempfile::TempDir,
    /// Whether this project's cache got the shared downloads already.
    seeded: std::cell::Cell<bool>,
}

impl Project {
    pub(crate) fn new(agents: &[&str], v: Variation) -> Project {
        Self::new_in(None, agents, v)
    }

    /// Like `new`, with the project nested at `<tmp>/<nest>` so two copies
    /// differ in absolute path length too.
    pub(crate) fn new_in(nest: Option<&str>, agents: &[&str], v: Variation) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = match nest {
            Some(n) => dir.path().join(n),
            None => dir.path().to_path_buf(),
        };
        fs::create_dir_all(root.join("agents")).unwrap();
        fs::create_dir_all(root.join("lockfiles")).unwrap();
        copy_tree(&repo().join("images"), &root.join("images"), v);
        for a in agents {
            copy_tree(
                &repo().join("agents").join(a),
                &root.join("agents").join(a),
                v,
            );
            let lock = repo().join(format!("lockfiles/{a}.lock.json"));
            if lock.is_file() {
                fs::copy(&lock, root.join(format!("lockfiles/{a}.lock.json"))).unwrap();
            }
        }
        Project {
            dir,
            root,
            cache: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
            seeded: std::cell::Cell::new(false),
        }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.root.clone()
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub(crate) fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub(crate) fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    /// Edit a JSON file through a closure on its value.
    pub(crate) fn edit_json(&self, rel: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value = serde_json::from_slice(&self.read(rel)).unwrap();
        f(&mut v);
        self.write(rel, serde_json::to_vec_pretty(&v).unwrap());
    }

    /// Run `bottle` with this project's cache and HOME, `registry` (or a
    /// closed port), and extra env.
    pub(crate) fn bottle(
        &self,
        args: &[&str],
        registry: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Out {
        self.bottle_with(args, registry, extra, None)
    }

    pub(crate) fn bottle_with(
        &self,
        args: &[&str],
        registry: Option<&str>,
        extra: &[(&str, &str)],
        umask: Option<u32>,
    ) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
        cmd.args(args)
            .current_dir(self.root())
            .stdin(Stdio::null())
            .env("BOTTLE_CACHE_DIR", self.cache.path())
            .env("HOME", self.home.path())
            .env_remove("BOTTLE_ROOT")
            // Port 9 on loopback (discard): nothing listens, nothing leaves the host.
            .env("BOTTLE_REGISTRY", registry.unwrap_or("127.0.0.1:9"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if let Some(mask) = umask {
            // SAFETY: umask is async-signal-safe and touches no shared state.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        if !self.seeded.replace(true) {
            share_downloads(&self.cache.path().join("fetch/sha256"), true);
        }
        let o = cmd.output().expect("run bottle");
        share_downloads(&self.cache.path().join("fetch/sha256"), false);
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Recursive copy keeping symlinks as symlinks, with the variation applied.
pub(crate) fn copy_tree(from: &Path, to: &Path, v: Variation) {
    fs::create_dir_all(to).unwrap();
    let mut names: Vec<_> = fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    if v.reverse {
        names.reverse();
    }
    for n in names {
        let src = from.join(&n);
        let dst = to.join(&n);
        let meta = fs::symlink_metadata(&src).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
            continue;
        } else if meta.is_dir() {
            copy_tree(&src, &dst, v);
            let mode = if v.tight_modes { 0o700 } else { 0o755 };
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mode = match (v.tight_modes, exec) {
                (true, true) => 0o700,
                (true, false) => 0o600,
                (false, true) => 0o755,
                (false, false) => 0o644,
            };
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).unwrap();
        }
        if let Some(t) = v.mtime {
            let f = fs::File::open(&dst).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
                .unwrap();
        }
    }
}

/// `sha256:…` from `<agent>@sha256:…` on stdout.
pub(crate) fn digest_of(out: &Out) -> String {
    let line = out.stdout.trim();
    let (_, d) = line
        .split_once('@')
        .unwrap_or_else(|| panic!("no reference on stdout: {out:?}"));
    d.to_string()
}

/// The lockfile as JSON.
pub(crate) fn lock_json(p: &Project, agent: &str) -> serde_json::Value {
    serde_json::from_slice(&p.read(&format!("lockfiles/{agent}.lock.json"))).unwrap()
}

/// Large downloads (Debian indexes and `.deb` files) are shared between the
/// test projects through one content-addressed folder, so each test's own
/// cache does not fetch the archive again: `seed` (once per project, before
/// its first command, so a test that empties its cache later gets an empty
/// cache) copies what the shared folder has into `dir`, else `dir`'s new
/// files go to the shared folder. Small files (the tests' own fetched
/// tools) are never shared. Safe because a cache file always hashes to its
/// name.
fn share_downloads(dir: &Path, seed: bool) {
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bottle-shared-fetch");
    let _ = fs::create_dir_all(&shared);
    let _ = fs::create_dir_all(dir);
    let (from, to): (&Path, &Path) = if seed { (&shared, dir) } else { (dir, &shared) };
    let Ok(rd) = fs::read_dir(from) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        let small = e.metadata().map(|m| m.len() < 256 * 1024).unwrap_or(true);
        if small
            || n.len() != 64
            || !n.bytes().all(|b| b.is_ascii_hexdigit())
            || to.join(&name).exists()
        {
            continue;
        }
        // Copy to a temp name and rename, so a reader never sees half a file.
        let tmp = to.join(format!(".share-{n}-{}", std::process::id()));
        if fs::hard_link(e.path(), &tmp).is_ok() || fs::copy(e.path(), &tmp).is_ok() {
            let _ = fs::rename(&tmp, to.join(&name));
        }
    }
}
