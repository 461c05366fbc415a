//! `bottle inspect`: what a locked bottle may do and what it is, read
//! without running anything, from a lockfile (`<agent>` or a path), the
//! local store or a registry (`<agent>@sha256:…`,
//! `<registry>/<repo>@sha256:…`), or an archive written by `bottle export`.
//!
//! Invariants:
//! - one [`Summary`] type whatever the source, built by the pure
//!   [`from_lockfile`] and [`from_image`]: the same locked image gives the
//!   same summary (and JSON) from each source when its lockfile is at hand;
//! - images record no layer provenance (no `history`, and adding any would
//!   change every digest), so layer names, the base reference, the inputs
//!   and the package pins come from a lockfile that locks this very
//!   manifest digest; without one they are absent and `provenance` says
//!   `image` (layers are then `layer:<i>`, kind `unknown`);
//! - what the image itself fixes (policy label, layer digests and sizes,
//!   platform) is read from the image when the source is an image;
//! - nothing here runs a container or writes the project; an archive is
//!   read into a temporary store, never the user's.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Classify, ExitKind};
use crate::lock::LockError;
use crate::lock::lockfile::{self, Lockfile};
use crate::oci::{BlobStore, BuiltImage, OciError};
use crate::policy::{Policy, SecretBinding, SidecarKind};
use crate::reference::Reference;
use crate::share::ShareError;

/// Version of the [`Summary`] JSON shape (README, "bottle inspect").
pub const SUMMARY_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "{}: no such file\n  help: pass a lockfile (lockfiles/<agent>.lock.json), an archive written by `bottle export`, <agent>, or <agent>@sha256:…",
        .0.display()
    )]
    NoFile(PathBuf),
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: not a lockfile ({why})\n  help: pass a file written by `bottle lock` (lockfiles/<agent>.lock.json) or an archive written by `bottle export`"
    )]
    NotLockfile { file: String, why: String },
    #[error(
        "unknown agent `{agent}`: {} does not exist{known}\n  help: check the name, or pass --root DIR for another project",
        .dir.display()
    )]
    UnknownAgent {
        agent: String,
        dir: PathBuf,
        known: String,
    },
    #[error(
        "{agent} is not locked: {} does not exist\n  help: run `bottle lock {agent}` first, or pass {agent}@sha256:…",
        .path.display()
    )]
    NotLocked { agent: String, path: PathBuf },
    #[error(
        "{what} is not in the local store and no registry is configured\n  help: pass --registry HOST[:PORT] (or set BOTTLE_REGISTRY), `bottle import` its archive, or inspect its lockfile with `bottle inspect <agent>`"
    )]
    Nowhere { what: String },
    #[error(
        "{}: not in a git repository, so there is no HEAD to compare with\n  help: name two references: `bottle diff <old> <new>` (lockfile paths work)",
        .0.display()
    )]
    NotGit(PathBuf),
    #[error(
        "{file} is not in git's HEAD ({why})\n  help: it is new in this change (nothing to compare with), or commit it first; or name two references: `bottle diff <old> <new>`"
    )]
    NotAtHead { file: String, why: String },
    #[error(
        "cannot run `git` to read the lockfile at HEAD: {0}\n  help: install git, or name two references: `bottle diff <old> <new>`"
    )]
    NoGit(std::io::Error),
    #[error("`git show HEAD:{file}` failed: {why}")]
    Git { file: String, why: String },
    #[error(transparent)]
    Lock(Box<LockError>),
    #[error(transparent)]
    Share(Box<ShareError>),
    #[error(transparent)]
    Acquire(Box<crate::acquire::AcquireError>),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error(transparent)]
    Oci(Box<OciError>),
}

// Boxed: the module errors are large and `inspect` returns them rarely.
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for InspectError {
            fn from(e: $ty) -> Self {
                InspectError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(Lock: LockError, Share: ShareError, Acquire: crate::acquire::AcquireError, Oci: OciError);

impl Classify for InspectError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            InspectError::NoFile(_)
            | InspectError::NotLockfile { .. }
            | InspectError::UnknownAgent { .. }
            | InspectError::NotLocked { .. }
            | InspectError::NotGit(_)
            | InspectError::NotAtHead { .. } => ExitKind::BadInput,
            InspectError::Read { .. }
            | InspectError::Nowhere { .. }
            | InspectError::NoGit(_)
            | InspectError::Git { .. } => ExitKind::Environment,
            InspectError::Lock(e) => e.exit_kind(),
            InspectError::Share(e) => e.exit_kind(),
            InspectError::Acquire(e) => e.exit_kind(),
            InspectError::Reference(e) => e.exit_kind(),
            InspectError::Oci(e) => e.exit_kind(),
        }
    }
}

/// Everything `inspect` shows; its JSON is the documented `--json` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub agent: String,
    pub image: ImageFacts,
    /// What the bottle may do (the image's `dev.bottle.policy`).
    pub capabilities: Capabilities,
    /// `lockfile` when layer names, base, inputs and packages come from a
    /// lockfile that locks this manifest digest; `image` when only the
    /// image was available (then those are absent or unknown).
    pub provenance: Provenance,
    /// Absent without a lockfile.
    pub base: Option<BaseFacts>,
    /// Bottom to top.
    pub layers: Vec<LayerFacts>,
    /// Sorted by name; absent without a lockfile.
    pub inputs: Option<Vec<InputFacts>>,
    /// The pinned Debian packages of the base; absent without a lockfile,
    /// empty when the recipe has none.
    pub packages: Option<Vec<PackageFacts>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    Lockfile,
    Image,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageFacts {
    pub manifest_digest: String,
    pub config_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Sum of the compressed layer sizes, in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Host patterns reachable on 443 (and 80).
    pub hosts: Vec<String>,
    /// Hosts reachable on 22.
    pub ssh_hosts: Vec<String>,
    /// Host environment variable names forwarded at run time.
    pub env: Vec<String>,
    /// Env names whose values the sidecar puts in requests to `hosts`.
    pub secrets: Vec<SecretBinding>,
    pub limits: LimitFacts,
    pub sidecar: SidecarFacts,
}

/// Effective limits (the default disk size spelled out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitFacts {
    pub memory_mib: u64,
    pub cpu_millis: u64,
    pub pids: u64,
    pub disk_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SidecarFacts {
    pub kind: SidecarKind,
    /// The pinned pipelock image; absent for the builtin sidecar.
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseFacts {
    /// `scratch` or the recipe's reference.
    pub reference: String,
    pub digest: Option<String>,
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerFacts {
    /// The lockfile's layer name (`from:<i>`, `debian:<n>`, `tools`,
    /// `skill:<name>`, `config`), or `layer:<i>` without a lockfile.
    pub name: String,
    pub made_by: MadeBy,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// What made a layer, from its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MadeBy {
    /// A layer of the base image, reused as it is.
    Base,
    /// Pinned Debian packages (a hash bucket of names, or `system`: links,
    /// dpkg status, CA bundle).
    Packages { set: String },
    /// The recipe's fetched tools and files.
    Tools,
    /// One skill.
    Skill { name: String },
    /// Settings, prompt and the manifest's `files`.
    Config,
    /// No lockfile said.
    Unknown,
}

impl MadeBy {
    pub fn of(name: &str) -> MadeBy {
        if name.starts_with("from:") {
            MadeBy::Base
        } else if let Some(set) = name.strip_prefix("debian:") {
            MadeBy::Packages { set: set.into() }
        } else if let Some(s) = name.strip_prefix("skill:") {
            MadeBy::Skill { name: s.into() }
        } else if name == "tools" {
            MadeBy::Tools
        } else if name == "config" {
            MadeBy::Config
        } else {
            MadeBy::Unknown
        }
    }

    /// Short human wording.
    pub fn describe(&self) -> String {
        match self {
            MadeBy::Base => "base image".into(),
            MadeBy::Packages { set } if set == "system" => "Debian system files".into(),
            MadeBy::Packages { set } => format!("Debian packages (set {set})"),
            MadeBy::Tools => "recipe tools and files".into(),
            MadeBy::Skill { name } => format!("skill {name}"),
            MadeBy::Config => "settings, prompt and files".into(),
            MadeBy::Unknown => "unknown (no lockfile)".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputFacts {
    /// `manifest`, `recipe`, `skill:<name>`, `prompt`, `file:<path>`,
    /// `recipe-file:<path>`, `fetch:<path>`, `packages`.
    pub name: String,
    /// Project-relative path of a local input.
    pub source: Option<String>,
    /// URL of a fetched input.
    pub url: Option<String>,
    /// The pin: `sha256:<hex>`.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageFacts {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub sha256: String,
    pub size: u64,
}

fn capabilities(p: &Policy) -> Capabilities {
    Capabilities {
        hosts: p.egress.allow.clone(),
        ssh_hosts: p.egress.ssh.clone(),
        env: p.env.clone(),
        secrets: p.secrets.clone(),
        limits: LimitFacts {
            memory_mib: p.limits.memory_mib,
            cpu_millis: p.limits.cpu_millis,
            pids: p.limits.pids,
            disk_mib: p.limits.disk_mib,
        },
        sidecar: SidecarFacts {
            kind: p.sidecar.kind,
            image: p.sidecar.image.clone(),
        },
    }
}

/// The summary a lockfile alone gives.
pub fn from_lockfile(lock: &Lockfile) -> Summary {
    let layers = lock
        .image
        .layers
        .iter()
        .map(|l| LayerFacts {
            made_by: MadeBy::of(&l.name),
            name: l.name.clone(),
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
        })
        .collect::<Vec<_>>();
    let mut inputs: Vec<InputFacts> = lock
        .inputs
        .iter()
        .map(|i| InputFacts {
            name: i.name.clone(),
            source: i.source.clone(),
            url: i.url.clone(),
            hash: i.hash.clone(),
        })
        .collect();
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    let packages = lock
        .packages
        .as_ref()
        .map(|p| {
            p.packages
                .iter()
                .map(|k| PackageFacts {
                    name: k.name.clone(),
                    version: k.version.clone(),
                    arch: k.arch.clone(),
                    suite: k.suite.clone(),
                    sha256: k.sha256.clone(),
                    size: k.size,
                })
                .collect()
        })
        .unwrap_or_default();
    Summary {
        schema: SUMMARY_SCHEMA,
        agent: lock.agent.clone(),
        image: ImageFacts {
            manifest_digest: lock.image.manifest_digest.clone(),
            config_digest: lock.image.config_digest.clone(),
            platform: lock.base.platform.clone(),
            size: layers.iter().map(|l| l.size).sum(),
        },
        capabilities: capabilities(&lock.policy),
        provenance: Provenance::Lockfile,
        base: Some(BaseFacts {
            reference: lock.base.reference.clone(),
            digest: lock.base.digest.clone(),
            platform: lock.base.platform.clone(),
        }),
        layers,
        inputs: Some(inputs),
        packages: Some(packages),
    }
}

/// The summary of an image (its policy label, layers and platform), with
/// provenance from `lock` when it locks this very manifest digest and
/// lists the same layers.
pub fn from_image(image: &BuiltImage, policy: &Policy, lock: Option<&Lockfile>) -> Summary {
    let lock = lock.filter(|l| {
        l.image.manifest_digest == image.manifest_digest
            && l.image.layers.len() == image.layers.len()
            && l.image
                .layers
                .iter()
                .zip(&image.layers)
                .all(|(a, b)| a.digest == b.digest)
    });
    let layers: Vec<LayerFacts> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let name = lock
                .map(|k| k.image.layers[i].name.clone())
                .unwrap_or_else(|| format!("layer:{i}"));
            LayerFacts {
                made_by: MadeBy::of(&name),
                name,
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
            }
        })
        .collect();
    let from_lock = lock.map(from_lockfile);
    Summary {
        schema: SUMMARY_SCHEMA,
        agent: policy.agent.clone(),
        image: ImageFacts {
            manifest_digest: image.manifest_digest.clone(),
            config_digest: image.config_digest.clone(),
            platform: image.platform.to_string(),
            size: layers.iter().map(|l| l.size).sum(),
        },
        capabilities: capabilities(policy),
        provenance: if lock.is_some() {
            Provenance::Lockfile
        } else {
            Provenance::Image
        },
        base: from_lock.as_ref().and_then(|s| s.base.clone()),
        layers,
        inputs: from_lock.as_ref().and_then(|s| s.inputs.clone()),
        packages: from_lock.and_then(|s| s.packages),
    }
}

/// Where a summary came from (said on stderr, not part of the JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Lockfile(PathBuf),
    Store(String),
    Registry(String),
    Archive(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Lockfile(p) => write!(f, "lockfile {}", p.display()),
            Origin::Store(r) => write!(f, "{r} in the local store"),
            Origin::Registry(r) => write!(f, "{r} pulled from its registry"),
            Origin::Archive(p) => write!(f, "archive {}", p.display()),
        }
    }
}

/// A summary and where it (and its provenance) came from.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub summary: Summary,
    pub origin: Origin,
    /// The lockfile that gave layer provenance, when it is not the origin.
    pub provenance_from: Option<PathBuf>,
}

/// Read and parse a lockfile at `path` (any name).
pub fn read_lockfile(path: &Path) -> Result<Lockfile, InspectError> {
    let text = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InspectError::NoFile(path.to_path_buf()),
        _ => InspectError::Read {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let file = path.display().to_string();
    let text = String::from_utf8(text).map_err(|_| InspectError::NotLockfile {
        file: file.clone(),
        why: "it is not UTF-8 text".into(),
    })?;
    parse_lockfile(&file, &text)
}

/// Parse lockfile text named `file`; a JSON document that is not a
/// lockfile at all gets its own plain error, a damaged lockfile the
/// lockfile parser's (naming the field).
pub fn parse_lockfile(file: &str, text: &str) -> Result<Lockfile, InspectError> {
    let not = |why: &str| InspectError::NotLockfile {
        file: file.to_string(),
        why: why.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| not(&format!("not valid JSON: {e}")))?;
    let looks_like_lock = value.get("inputs_hash").is_some()
        && value.get("image").is_some_and(serde_json::Value::is_object);
    if !looks_like_lock {
        return Err(not("it has no `inputs_hash` and `image` fields"));
    }
    Ok(Lockfile::parse(file, text)?)
}

/// Is `arg` meant as a file? Something shaped like a path that no
/// reference can be (`./x`, `/x`, `a/b` without a digest, `*.json`,
/// `*.tar`); a bare word is always an agent name.
fn is_path_like(arg: &str) -> bool {
    arg.ends_with(".json")
        || arg.ends_with(".tar")
        || arg.starts_with('.')
        || arg.starts_with('/')
        || (arg.contains('/') && Reference::parse(arg).is_err())
}

/// Does the file at `path` start like JSON (a lockfile) rather than a tar?
fn starts_like_json(path: &Path) -> Result<bool, InspectError> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| InspectError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(head[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{'))
}

/// The project's lockfile of `agent` when it locks `digest`.
fn matching_lock(root: Option<&Path>, agent: &str, digest: &str) -> Option<(PathBuf, Lockfile)> {
    let root = crate::acquire::project_root(root).ok()?;
    let lock = Lockfile::read(&root, agent).ok()??;
    (lock.image.manifest_digest == digest).then(|| (root.join(lockfile::rel_path(agent)), lock))
}

/// Inspect `arg`: a lockfile path, an archive path, `<agent>` (its
/// lockfile), `<agent>@sha256:…` or `<registry>/<repo>@sha256:…` (the
/// local store, else `registry`).
pub async fn inspect(
    arg: &str,
    registry: Option<&str>,
    root: Option<&Path>,
) -> Result<Inspected, InspectError> {
    if is_path_like(arg) {
        let path = PathBuf::from(arg);
        if !path.is_file() {
            return Err(InspectError::NoFile(path));
        }
        if starts_like_json(&path)? {
            let lock = read_lockfile(&path)?;
            return Ok(Inspected {
                summary: from_lockfile(&lock),
                origin: Origin::Lockfile(path),
                provenance_from: None,
            });
        }
        return inspect_archive(&path, root);
    }
    let reference = Reference::parse(arg)?;
    if let Reference::Agent(agent) = &reference {
        let root = crate::acquire::project_root(root)?;
        let path = root.join(lockfile::rel_path(agent));
        let Some(lock) = Lockfile::read(&root, agent)? else {
            let dir = root.join("agents").join(agent);
            if dir.is_dir() {
                return Err(InspectError::NotLocked {
                    agent: agent.clone(),
                    path,
                });
            }
            let known = crate::manifest::list_agents(&root)
                .ok()
                .filter(|a| !a.is_empty())
                .map(|a| format!(" (agents here: {})", a.join(", ")))
                .unwrap_or_default();
            return Err(InspectError::UnknownAgent {
                agent: agent.clone(),
                dir,
                known,
            });
        };
        return Ok(Inspected {
            summary: from_lockfile(&lock),
            origin: Origin::Lockfile(path),
            provenance_from: None,
        });
    }
    inspect_image(&reference, registry, root).await
}

async fn inspect_image(
    reference: &Reference,
    registry: Option<&str>,
    root: Option<&Path>,
) -> Result<Inspected, InspectError> {
    let loc = crate::acquire::locate(reference, registry, || crate::acquire::project_root(root))?;
    let store = crate::share::open_store()?;
    let (image, origin) = match BuiltImage::from_store(&loc.digest, &store) {
        Ok(i) => (i, Origin::Store(loc.to_string())),
        Err(_) if loc.registry.is_some() => {
            let (i, _) =
                crate::acquire::to_store(&loc, &store, &crate::progress::Progress::auto()).await?;
            (i, Origin::Registry(loc.to_string()))
        }
        Err(_) => {
            // Not here and nowhere to pull from: the lockfile that locks
            // this digest says the same (it is what `run` would realize).
            let agent = reference.agent().unwrap_or_default();
            if let Some((path, lock)) = matching_lock(root, agent, &loc.digest) {
                return Ok(Inspected {
                    summary: from_lockfile(&lock),
                    origin: Origin::Lockfile(path),
                    provenance_from: None,
                });
            }
            return Err(InspectError::Nowhere {
                what: loc.to_string(),
            });
        }
    };
    with_policy(&image, origin, root)
}

fn inspect_archive(path: &Path, root: Option<&Path>) -> Result<Inspected, InspectError> {
    // A scratch store: inspecting an archive must not import it.
    let tmp = tempfile::tempdir().map_err(|e| InspectError::Read {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let store = BlobStore::open(tmp.path())?;
    let image = crate::share::read(path, &store)?;
    with_policy(&image, Origin::Archive(path.to_path_buf()), root)
}

fn with_policy(
    image: &BuiltImage,
    origin: Origin,
    root: Option<&Path>,
) -> Result<Inspected, InspectError> {
    let policy = crate::share::policy_of(image)?;
    let lock = matching_lock(root, &policy.agent, &image.manifest_digest);
    let summary = from_image(image, &policy, lock.as_ref().map(|(_, l)| l));
    let provenance_from = lock
        .map(|(p, _)| p)
        .filter(|_| summary.provenance == Provenance::Lockfile);
    Ok(Inspected {
        summary,
        origin,
        provenance_from,
    })
}

/// The lockfile of `agent` as committed at git's `HEAD` in the project
/// (`git show HEAD:./lockfiles/<agent>.lock.json`, run in the project
/// root: git is the user's tool, and its answer is only read).
pub fn at_git_head(root: Option<&Path>, agent: &str) -> Result<Inspected, InspectError> {
    let root = crate::acquire::project_root(root)?;
    let rel = lockfile::rel_path(agent);
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["show", &format!("HEAD:./{rel}")])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(InspectError::NoGit)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(if why.contains("not a git repository") {
            InspectError::NotGit(root)
        } else if why.contains("HEAD")
            && (why.contains("does not exist")
                || why.contains("not in")
                || why.contains("invalid object name")
                || why.contains("unknown revision"))
        {
            InspectError::NotAtHead { file: rel, why }
        } else {
            InspectError::Git { file: rel, why }
        });
    }
    let label = format!("HEAD:{rel}");
    let text = String::from_utf8(out.stdout).map_err(|_| InspectError::NotLockfile {
        file: label.clone(),
        why: "it is not UTF-8 text".into(),
    })?;
    let lock = parse_lockfile(&label, &text)?;
    Ok(Inspected {
        summary: from_lockfile(&lock),
        origin: Origin::Lockfile(PathBuf::from(label)),
        provenance_from: None,
    })
}

/// `12345` → `12.1 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1000` → `1`, `1500` → `1.5` (CPUs).
pub fn cpus(millis: u64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{}.{:03}", millis / 1000, millis % 1000)
            .trim_end_matches('0')
            .to_string()
    }
}

/// The human report of a summary (what `bottle inspect` prints).
pub fn render(s: &Summary) -> String {
    use std::fmt::Write as _;
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
    };
    let c = &s.capabilities;
    let mut out = String::new();
    let _ = writeln!(out, "{}@{}", s.agent, s.image.manifest_digest);
    let _ = writeln!(out, "may do:");
    let _ = writeln!(out, "  hosts      {}", list(&c.hosts));
    let _ = writeln!(out, "  ssh hosts  {}", list(&c.ssh_hosts));
    let _ = writeln!(out, "  env        {}", list(&c.env));
    if c.secrets.is_empty() {
        let _ = writeln!(out, "  secrets    (none)");
    } else {
        let _ = writeln!(out, "  secrets");
        for b in &c.secrets {
            let _ = writeln!(
                out,
                "    {} -> {} ({})",
                b.env,
                b.hosts.join(", "),
                b.header
            );
        }
    }
    let l = &c.limits;
    let _ = writeln!(
        out,
        "  limits     memory {} MiB, cpus {}, pids {}, disk {} MiB",
        l.memory_mib,
        cpus(l.cpu_millis),
        l.pids,
        l.disk_mib
    );
    let _ = writeln!(
        out,
        "  sidecar    {}{}",
        c.sidecar.kind.as_str(),
        c.sidecar
            .image
            .as_deref()
            .map(|i| format!(" {i}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "is:");
    match &s.base {
        Some(b) => {
            let _ = writeln!(
                out,
                "  base       {}{} ({})",
                b.reference,
                b.digest
                    .as_deref()
                    .map(|d| format!("@{d}"))
                    .unwrap_or_default(),
                b.platform
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  base       unknown (no lockfile) ({})",
                s.image.platform
            );
        }
    }
    let _ = writeln!(out, "  config     {}", s.image.config_digest);
    let _ = writeln!(
        out,
        "  layers     {} ({})",
        s.layers.len(),
        human_size(s.image.size)
    );
    let width = s.layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for l in &s.layers {
        let _ = writeln!(
            out,
            "    {:width$}  {:10}  {}  {}",
            l.name,
            human_size(l.size),
            l.digest,
            l.made_by.describe(),
        );
    }
    match &s.inputs {
        Some(inputs) => {
            let _ = writeln!(out, "  inputs     {}", inputs.len());
            let width = inputs.iter().map(|i| i.name.len()).max().unwrap_or(0);
            for i in inputs {
                let from = i.url.as_deref().or(i.source.as_deref()).unwrap_or("-");
                let _ = writeln!(out, "    {:width$}  {}  {from}", i.name, i.hash);
            }
        }
        None => {
            let _ = writeln!(out, "  inputs     unknown (no lockfile)");
        }
    }
    if let Some(p) = s.packages.as_ref().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "  packages   {}", p.len());
        for k in p {
            let _ = writeln!(
                out,
                "    {} {} ({}, {}, {})",
                k.name,
                k.version,
                k.arch,
                k.suite,
                human_size(k.size)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lockfile {
        let text = include_str!("../lockfiles/hello.lock.json");
        Lockfile::parse("lockfiles/hello.lock.json", text).unwrap()
    }

    #[test]
    fn layer_kinds_follow_the_lockfile_names() {
        let s = from_lockfile(&lock());
        let kinds: Vec<String> = s.layers.iter().map(|l| l.made_by.describe()).collect();
        assert_eq!(
            kinds,
            [
                "Debian packages (set 9)",
                "Debian system files",
                "recipe tools and files",
                "skill greet",
                "settings, prompt and files",
            ]
        );
        assert_eq!(s.image.size, s.layers.iter().map(|l| l.size).sum::<u64>());
        assert_eq!(
            s.capabilities.limits.disk_mib,
            crate::policy::DEFAULT_DISK_MIB
        );
        assert_eq!(s.packages.as_ref().unwrap()[0].name, "busybox-static");
    }

    #[test]
    fn a_json_file_that_is_not_a_lockfile_says_so() {
        let e = parse_lockfile(
            "agents/hello/bottle.json",
            r#"{"schema":1,"image":"busybox"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, InspectError::NotLockfile { .. }), "{e}");
        assert!(e.to_string().contains("agents/hello/bottle.json"), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
        let e = parse_lockfile("x", "not json").unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }

    #[test]
    fn sizes_and_cpus_read_well() {
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(cpus(1000), "1");
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(250), "0.25");
    }
}
