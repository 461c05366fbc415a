//! The lockfile, `lockfiles/<agent>.lock.json`: its schema, and reading and
//! writing it.
//!
//! Invariants: the bytes written are pretty JSON with keys sorted at every
//! level and a trailing newline, so the same lock is the same file on every
//! machine; writes go to a temp file in the same folder, are synced and then
//! renamed over the old file, so a failed or killed `lock` leaves the previous
//! lockfile byte-for-byte intact. The lockfile names no registry host.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LockError;
use crate::manifest::json;
use crate::policy::{Policy, SidecarKind};

pub use crate::oci::digest::is_digest;

pub const LOCK_SCHEMA: u32 = 1;

const LOCK_HELP: &str = "the lockfile is written by `bottle lock`: restore it with `git checkout -- <file>`, or delete it and run `bottle lock <agent>`";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub schema: u32,
    pub agent: String,
    /// Version of the builder's output format (see `BUILDER_FORMAT`).
    pub builder: u32,
    /// sha256 over everything that decides the image; see `resolve::inputs_hash`.
    pub inputs_hash: String,
    pub base: LockedBase,
    /// Every input, sorted by name.
    pub inputs: Vec<LockedInput>,
    pub policy: Policy,
    pub env: Vec<String>,
    pub sidecar: LockedSidecar,
    pub image: LockedImage,
    /// Debian packages of the base, when the recipe lists `packages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<LockedPackages>,
}

/// The pinned Debian userland of a base (see `crate::debian`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackages {
    /// Debian architecture (`amd64`).
    pub arch: String,
    /// sha256 of the recipe's `packages` object and the architecture: the
    /// pins are kept while it is unchanged (unless `--update`).
    pub request: String,
    /// Each suite a pinned package came from, with its `InRelease` date
    /// (suites that were searched but supplied nothing are not recorded).
    pub suites: Vec<LockedSuite>,
    /// Sorted by name.
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSuite {
    pub suite: String,
    pub codename: String,
    pub date: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Path in the archive (`pool/main/…/x.deb`); the archive URI comes
    /// from the apt configuration, so a mirror serves the same lock.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The suite whose index listed it.
    pub suite: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    /// `scratch` or the reference as the recipe wrote it.
    pub reference: String,
    /// Manifest digest of the base for `platform`; absent for `scratch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedInput {
    /// `manifest`, `recipe`, `skill:<name>`, `prompt`, `file:<path>`,
    /// `recipe-file:<path>`, `fetch:<path>`.
    pub name: String,
    /// Project-relative path of a local input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// URL of a fetched input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `sha256:<hex>`: of the content (fetched), of the tree (local), of the
    /// canonical document (manifest, recipe).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSidecar {
    pub kind: SidecarKind,
    /// For pipelock: `ghcr.io/luckypipewrench/pipelock@sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// Repository path without a registry host: `bottle/<agent>`.
    pub repository: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<LockedLayer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLayer {
    pub name: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// `lockfiles/<agent>.lock.json`, relative to the project root.
pub fn rel_path(agent: &str) -> String {
    format!("lockfiles/{agent}.lock.json")
}

impl Lockfile {
    /// The exact bytes of the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("lockfile serializes");
        let mut out =
            serde_json::to_vec_pretty(&json::canonical(&value)).expect("lockfile serializes");
        out.push(b'\n');
        out
    }

    /// Read the lockfile of `agent`; `Ok(None)` when there is none.
    pub fn read(root: &Path, agent: &str) -> Result<Option<Lockfile>, LockError> {
        let rel = rel_path(agent);
        let path = root.join(&rel);
        let text = match fs::read(&path) {
            Ok(b) => {
                String::from_utf8(b).map_err(|_| LockError::lockfile(&rel, "", "is not UTF-8"))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LockError::io("cannot read", &path, e)),
        };
        let lock = Lockfile::parse(&rel, &text)?;
        if lock.agent != agent {
            return Err(LockError::lockfile(
                &rel,
                "agent",
                &format!("names agent `{}`, not `{agent}`", lock.agent),
            ));
        }
        Ok(Some(lock))
    }

    /// Parse and validate the text of a lockfile; `file` names it in errors
    /// (a project-relative path, a path given on the command line, or
    /// `HEAD:lockfiles/<agent>.lock.json`). The agent is not checked
    /// against the file name ([`Lockfile::read`] does that).
    pub fn parse(file: &str, text: &str) -> Result<Lockfile, LockError> {
        let lock: Lockfile = json::parse(file, text, LOCK_HELP)?;
        if lock.schema != LOCK_SCHEMA {
            return Err(LockError::lockfile(
                file,
                "schema",
                &format!(
                    "schema {} is not supported (this bottle reads schema {LOCK_SCHEMA})",
                    lock.schema
                ),
            ));
        }
        for (field, d) in [
            ("image.manifest_digest", &lock.image.manifest_digest),
            ("image.config_digest", &lock.image.config_digest),
            ("inputs_hash", &lock.inputs_hash),
        ] {
            if !is_digest(d) {
                return Err(LockError::lockfile(
                    file,
                    field,
                    &format!("`{d}` is not `sha256:` followed by 64 lowercase hex digits"),
                ));
            }
        }
        if let Some(d) = &lock.base.digest {
            if !is_digest(d) {
                return Err(LockError::lockfile(
                    file,
                    "base.digest",
                    &format!("`{d}` is not a sha256 digest"),
                ));
            }
        }
        lock.policy
            .validate()
            .map_err(|e| LockError::lockfile(file, "policy", &e.to_string()))?;
        Ok(lock)
    }

    /// Write atomically: temp file beside the target, fsync, rename.
    pub fn write(&self, root: &Path) -> Result<(), LockError> {
        let dir = root.join("lockfiles");
        fs::create_dir_all(&dir).map_err(|e| LockError::io("cannot create", &dir, e))?;
        let path = root.join(rel_path(&self.agent));
        // Lockfiles are committed: the usual 0644, not a temp file's 0600.
        crate::fsutil::write_atomic(&path, &self.to_bytes(), 0o644)
            .map_err(|e| LockError::io(e.action, &e.path, e.source))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Egress, Limits, Sidecar};

    fn sample() -> Lockfile {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        Lockfile {
            schema: LOCK_SCHEMA,
            agent: "a".into(),
            builder: 1,
            inputs_hash: d('1'),
            base: LockedBase {
                reference: "scratch".into(),
                digest: None,
                platform: "linux/amd64".into(),
            },
            inputs: vec![],
            policy: Policy {
                schema: 1,
                agent: "a".into(),
                egress: Egress {
                    allow: vec!["example.com".into()],
                    ssh: vec![],
                },
                env: vec![],
                sidecar: Sidecar {
                    kind: SidecarKind::Builtin,
                    image: None,
                },
                limits: Limits::default(),
                secrets: vec![],
            },
            env: vec![],
            sidecar: LockedSidecar {
                kind: SidecarKind::Builtin,
                image: None,
            },
            image: LockedImage {
                repository: "bottle/a".into(),
                manifest_digest: d('2'),
                config_digest: d('3'),
                layers: vec![],
            },
            packages: None,
        }
    }

    #[test]
    fn bytes_are_sorted_pretty_and_newline_terminated() {
        let b = sample().to_bytes();
        let text = String::from_utf8(b).unwrap();
        assert!(text.ends_with("}\n"));
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn write_then_read_round_trips_atomically() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Lockfile::read(d.path(), "a").unwrap(), None);
        sample().write(d.path()).unwrap();
        assert_eq!(Lockfile::read(d.path(), "a").unwrap(), Some(sample()));
        let names: Vec<_> = fs::read_dir(d.path().join("lockfiles"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.lock.json"]);
        // A lockfile for another agent is refused.
        fs::copy(
            d.path().join("lockfiles/a.lock.json"),
            d.path().join("lockfiles/b.lock.json"),
        )
        .unwrap();
        assert!(Lockfile::read(d.path(), "b").is_err());
    }
}
