//! Where a locked image is and how to get it, for every command that needs
//! one (`run`, `push`, `export`): [`locate`] turns a reference into the exact
//! digest (and what the lockfile says about it), then [`to_store`] or
//! [`to_engine`] bring that digest where it is needed by the cheapest sound
//! path, in this order: already there (the engine's image ID equals the
//! locked config digest), the local blob store, a configured registry (pull
//! by digest), or realized from the lockfile (rebuilt from its pins exactly
//! as `check` rebuilds, through `lock::rebuild_from_lock`).
//!
//! Invariants: nothing is taken by tag; an image is used only when its
//! digest is the one asked for (engine: image ID == config digest, which
//! fixes every layer's diff ID; store and registry: content addresses; a
//! realized image: its rebuilt manifest digest equals the locked one, else
//! the run stops naming what differs, in `check`'s words); a store load is
//! streamed into the engine, never written whole to a temp file.

use std::fmt;
use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::engine::{self, EngineError};
use crate::error::{Classify, ExitKind};
use crate::lock::{self, LockError};
use crate::oci::{BlobStore, BuiltImage, OciError, Platform};
use crate::policy::Policy;
use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("{}: {message}", .path.display())]
    Lockfile { path: PathBuf, message: String },
    #[error(
        "no project root: no `agents/` folder in {} or its parents; pass --root DIR or a full <registry>/<repo>@sha256:… reference",
        .0.display()
    )]
    NoRoot(PathBuf),
    #[error(
        "{what} is not in the engine or the local store, no registry is configured, and it cannot be realized from a lockfile{why}\n  \
         help: pass --registry HOST[:PORT] (or set BOTTLE_REGISTRY) where it was pushed, `bottle import` its archive, or run `bottle lock <agent>` in its project"
    )]
    Nowhere { what: String, why: String },
    #[error(
        "{agent}: the image rebuilt from lockfiles/{agent}.lock.json does not have the locked digest {digest}, so it was not used:\n  {}\n  \
         help: `bottle check {agent}` shows the same; restore the changed input, or run `bottle lock {agent}` and commit the lockfile",
        .problems.join("\n  ")
    )]
    Differs {
        agent: String,
        digest: String,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Oci(#[from] OciError),
}

impl Classify for AcquireError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            AcquireError::Lockfile { .. } | AcquireError::NoRoot(_) => ExitKind::BadInput,
            AcquireError::Nowhere { .. } => ExitKind::Environment,
            AcquireError::Differs { .. } => ExitKind::Failure,
            AcquireError::Lock(e) => e.exit_kind(),
            AcquireError::Engine(e) => e.exit_kind(),
            AcquireError::Registry(e) => e.exit_kind(),
            AcquireError::Oci(e) => e.exit_kind(),
        }
    }
}

/// One image, named by digest, and everything known about where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The registry to pull from when nothing local has it.
    pub registry: Option<String>,
    /// Repository path without a host (`bottle/hello`).
    pub repository: String,
    pub digest: String,
    /// The config digest (= the engine's image ID) when a lockfile that
    /// locks this digest names it.
    pub config_digest: Option<String>,
    /// The policy in that lockfile.
    pub policy: Option<Policy>,
    /// (project root, agent) when the image can be rebuilt from its
    /// lockfile: the lockfile locks this digest and the agent's manifest is
    /// in the project.
    pub realizable: Option<(PathBuf, String)>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.registry {
            Some(r) => write!(f, "{r}/{}@{}", self.repository, self.digest),
            None => write!(f, "{}@{}", self.repository, self.digest),
        }
    }
}

impl Located {
    /// `registry/repo@digest` when a registry is known.
    pub fn remote(&self) -> Option<String> {
        self.registry
            .as_ref()
            .map(|r| format!("{r}/{}@{}", self.repository, self.digest))
    }
}

/// The facts commands need from `lockfiles/<agent>.lock.json`, read loosely
/// (the builder owns the format; `run` needs only these fields).
#[derive(Debug, Clone)]
pub struct LockFacts {
    pub repository: String,
    pub digest: String,
    pub config_digest: Option<String>,
    pub policy: Option<Policy>,
}

/// Find the project root: the given one, or the nearest ancestor of the
/// current directory with an `agents/` folder.
pub fn project_root(root: Option<&Path>) -> Result<PathBuf, AcquireError> {
    if let Some(r) = root {
        return Ok(r.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| AcquireError::Lockfile {
        path: PathBuf::from("."),
        message: format!("cannot read the current directory: {e}"),
    })?;
    cwd.ancestors()
        .find(|d| d.join("agents").is_dir())
        .map(Path::to_path_buf)
        .ok_or(AcquireError::NoRoot(cwd))
}

/// Read the lockfile of `agent` under `root`.
pub fn read_lock(root: &Path, agent: &str) -> Result<LockFacts, AcquireError> {
    let path = root.join(lock::lockfile::rel_path(agent));
    let err = |message: String| AcquireError::Lockfile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(format!(
            "cannot read the lockfile ({e}); run `bottle lock {agent}` first or pass {agent}@sha256:…"
        ))
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let image = &v["image"];
    let digest_field = |keys: &[&str], field: &str| -> Result<Option<String>, AcquireError> {
        match keys.iter().find_map(|k| image[*k].as_str()) {
            None => Ok(None),
            Some(d) if crate::reference::is_digest(d) => Ok(Some(d.to_string())),
            Some(d) => Err(err(format!(
                "field `image.{field}` is `{d}`, expected sha256:<64 hex>"
            ))),
        }
    };
    let digest = digest_field(&["manifest_digest", "digest"], "manifest_digest")?
        .ok_or_else(|| err("field `image.manifest_digest` is missing".into()))?;
    let config_digest = digest_field(&["config_digest"], "config_digest")?;
    let repository = image["repository"].as_str().unwrap_or(agent).to_string();
    let policy = match v.get("policy") {
        Some(p) => {
            let p: Policy = serde_json::from_value(p.clone())
                .map_err(|e| err(format!("field `policy`: {e}")))?;
            p.validate()
                .map_err(|e| err(format!("field `policy`: {e}")))?;
            Some(p)
        }
        None => None,
    };
    Ok(LockFacts {
        repository,
        digest,
        config_digest,
        policy,
    })
}

/// Where `reference`'s image lives. `<agent>` takes digest and repository
/// from the lockfile under `root`; `<agent>@sha256:…` takes the repository
/// from the lockfile when there is one (else `bottle/<agent>`); both use
/// `registry` when one is configured. A full reference names its own.
pub fn locate(
    reference: &Reference,
    registry: Option<&str>,
    root: impl FnOnce() -> Result<PathBuf, AcquireError>,
) -> Result<Located, AcquireError> {
    let registry = registry.map(str::to_string);
    let from_lock = |root: PathBuf, agent: &str, l: LockFacts, digest: &str| {
        let same = l.digest == digest;
        let has_manifest = root
            .join("agents")
            .join(agent)
            .join("bottle.json")
            .is_file();
        Located {
            registry: registry.clone(),
            repository: l.repository,
            digest: digest.to_string(),
            config_digest: l.config_digest.filter(|_| same),
            policy: l.policy.filter(|_| same),
            realizable: (same && has_manifest).then(|| (root, agent.to_string())),
        }
    };
    match reference {
        Reference::Agent(agent) => {
            let root = root()?;
            let l = read_lock(&root, agent)?;
            let digest = l.digest.clone();
            Ok(from_lock(root, agent, l, &digest))
        }
        Reference::AgentDigest { agent, digest } => {
            // The lockfile (if any) only names the repository path unless it
            // locks this very digest; no project is needed at all.
            let found = root()
                .ok()
                .and_then(|r| read_lock(&r, agent).ok().map(|l| (r, l)));
            Ok(match found {
                Some((r, l)) => from_lock(r, agent, l, digest),
                None => Located {
                    registry,
                    repository: lock::repository(agent),
                    digest: digest.clone(),
                    config_digest: None,
                    policy: None,
                    realizable: None,
                },
            })
        }
        Reference::Full {
            registry,
            repository,
            digest,
        } => Ok(Located {
            registry: Some(registry.clone()),
            repository: repository.clone(),
            digest: digest.clone(),
            config_digest: None,
            policy: None,
            realizable: None,
        }),
    }
}

/// How an image reached the engine or the store (the preflight says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Engine,
    Store,
    Registry,
    Realized,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Engine => "already in the engine (image ID = locked config digest)",
            Source::Store => "loaded into the engine from the local store",
            Source::Registry => "pulled by digest from the registry",
            Source::Realized => {
                "realized from the lockfile (rebuilt to the locked digest) and loaded into the engine"
            }
        })
    }
}

/// The image whole in the store, or `None`.
fn in_store(digest: &str, store: &BlobStore) -> Option<BuiltImage> {
    BuiltImage::from_store(digest, store)
        .ok()
        .filter(|i| i.layers.iter().all(|l| store.has(&l.digest)))
}

/// Bring `loc`'s image into the store: already there, else pulled by digest
/// from its registry, else realized from its lockfile.
pub async fn to_store(
    loc: &Located,
    store: &BlobStore,
    progress: &Progress,
) -> Result<(BuiltImage, Source), AcquireError> {
    crate::oci::digest::hex_part(&loc.digest)?;
    if let Some(i) = in_store(&loc.digest, store) {
        return Ok((i, Source::Store));
    }
    let pulled = match &loc.registry {
        Some(r) => Some(pull_to_store(r, loc, store, progress).await),
        None => None,
    };
    match pulled {
        Some(Ok(i)) => Ok((i, Source::Registry)),
        Some(Err(e)) if loc.realizable.is_none() => Err(e),
        _ => Ok((realize(loc, store).await?, Source::Realized)),
    }
}

async fn pull_to_store(
    registry: &str,
    loc: &Located,
    store: &BlobStore,
    progress: &Progress,
) -> Result<BuiltImage, AcquireError> {
    let client = RegistryClient::new(registry)?;
    match client
        .pull(
            &loc.repository,
            &loc.digest,
            &Platform::default(),
            store,
            progress,
        )
        .await
    {
        Ok(_) => {}
        // The digest already fixes the platform; a non-amd64 image is still
        // the image asked for, and the pull stored it before complaining.
        Err(RegistryError::NoPlatform { .. }) if store.has(&loc.digest) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(BuiltImage::from_store(&loc.digest, store)?)
}

/// Rebuild `loc` from its lockfile exactly as `check` does; the image is
/// used only when the rebuild has the locked digest.
async fn realize(loc: &Located, store: &BlobStore) -> Result<BuiltImage, AcquireError> {
    let Some((root, agent)) = &loc.realizable else {
        return Err(AcquireError::Nowhere {
            what: loc.to_string(),
            why: String::new(),
        });
    };
    let ctx = lock::Context {
        root: root.clone(),
        cache_root: store
            .root()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(lock::fetch::default_cache_root),
        registry: None,
        platform: Platform::default().to_string(),
        offline: false,
    };
    let (report, built) = lock::rebuild_from_lock(&ctx, agent).await?;
    match built {
        Some(b) if report.ok() && b.manifest_digest == loc.digest => Ok(b),
        _ => Err(AcquireError::Differs {
            agent: agent.clone(),
            digest: loc.digest.clone(),
            problems: report.problems,
        }),
    }
}

/// What [`to_engine`] did: the name to create containers from, and how.
#[derive(Debug, Clone)]
pub struct InEngine {
    /// The engine's image ID (`sha256:<config digest>`) or
    /// `registry/repo@digest` for a registry pull.
    pub reference: String,
    pub source: Source,
    /// Human detail (e.g. why the registry was passed over).
    pub notes: Vec<String>,
}

/// Bring `loc`'s image into the engine by the cheapest sound path.
pub async fn to_engine(
    docker: &Docker,
    loc: &Located,
    store: &BlobStore,
    progress: &mut (dyn FnMut(&engine::PullProgress) + Send),
) -> Result<InEngine, AcquireError> {
    let stored = in_store(&loc.digest, store);
    let config = loc
        .config_digest
        .clone()
        .or_else(|| stored.as_ref().map(|i| i.config_digest.clone()));
    let done = |reference: String, source| InEngine {
        reference,
        source,
        notes: Vec::new(),
    };
    if let Some(c) = &config
        && engine::image_id(docker, c).await?.as_deref() == Some(c.as_str())
    {
        return Ok(done(c.clone(), Source::Engine));
    }
    if let Some(r) = loc.remote()
        && let Ok(info) = engine::inspect_image(docker, &r).await
        && engine::verify_digest(
            &info,
            &format!("{}/{}", registry_of(loc), loc.repository),
            &loc.digest,
        )
        .is_ok()
    {
        return Ok(done(r, Source::Engine));
    }
    if let Some(image) = stored {
        let id = load(docker, loc, &image, store).await?;
        return Ok(done(id, Source::Store));
    }
    let mut notes = Vec::new();
    if let Some(r) = loc.remote() {
        let pulled = engine::pull(docker, &r, &mut *progress).await;
        match pulled {
            Ok(()) => {
                let info = engine::inspect_image(docker, &r).await?;
                let repo = format!("{}/{}", registry_of(loc), loc.repository);
                engine::verify_digest(&info, &repo, &loc.digest)?;
                return Ok(done(r, Source::Registry));
            }
            Err(e) if loc.realizable.is_none() => return Err(e.into()),
            Err(e) => notes.push(format!("{e}; realizing it from the lockfile instead")),
        }
    }
    if loc.realizable.is_none() {
        return Err(AcquireError::Nowhere {
            what: loc.to_string(),
            why: realize_why(loc),
        });
    }
    let image = realize(loc, store).await?;
    let id = load(docker, loc, &image, store).await?;
    Ok(InEngine {
        reference: id,
        source: Source::Realized,
        notes,
    })
}

fn registry_of(loc: &Located) -> &str {
    loc.registry.as_deref().unwrap_or_default()
}

fn realize_why(loc: &Located) -> String {
    if loc.policy.is_some() || loc.config_digest.is_some() {
        " (its lockfile is here, but not the agent's manifest agents/<agent>/bottle.json)".into()
    } else {
        String::new()
    }
}

/// Stream `image` from the store into the engine (`docker load` through the
/// API), named `bottle/<agent>:sha256-<hex>`, and check the engine's image
/// ID is the config digest. Returns that ID.
async fn load(
    docker: &Docker,
    loc: &Located,
    image: &BuiltImage,
    store: &BlobStore,
) -> Result<String, AcquireError> {
    let tag = format!(
        "{}:sha256-{}",
        loc.repository,
        crate::oci::digest::hex_part(&image.manifest_digest)?
    );
    engine::load_image(docker, image, store, &tag, &Progress::auto()).await?;
    Ok(image.config_digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn no_root() -> Result<PathBuf, AcquireError> {
        Err(AcquireError::NoRoot(PathBuf::from("/nowhere")))
    }

    #[test]
    fn locate_full_and_agent_digest_need_no_project() {
        let r = Reference::parse(&format!("localhost:5000/a/b@{D}")).unwrap();
        let l = locate(&r, Some("ignored:1"), no_root).unwrap();
        assert_eq!(l.to_string(), format!("localhost:5000/a/b@{D}"));
        assert!(l.realizable.is_none());
        let r = Reference::parse(&format!("hello@{D}")).unwrap();
        let l = locate(&r, Some("127.0.0.1:5002"), no_root).unwrap();
        assert_eq!(l.to_string(), format!("127.0.0.1:5002/bottle/hello@{D}"));
        let l = locate(&r, None, no_root).unwrap();
        assert_eq!(l.to_string(), format!("bottle/hello@{D}"));
        assert_eq!(l.remote(), None);
        let e = locate(&Reference::Agent("hello".into()), None, no_root).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
    }

    #[test]
    fn locate_agent_reads_the_lockfile_and_knows_it_can_be_realized() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("lockfiles")).unwrap();
        std::fs::create_dir_all(root.join("agents/a")).unwrap();
        let c = format!("sha256:{}", "c".repeat(64));
        std::fs::write(
            root.join("lockfiles/a.lock.json"),
            format!(
                r#"{{"image":{{"repository":"bottle/a","manifest_digest":"{D}","config_digest":"{c}"}}}}"#
            ),
        )
        .unwrap();
        let at = || Ok(root.to_path_buf());
        let l = locate(&Reference::Agent("a".into()), None, at).unwrap();
        assert_eq!(l.digest, D);
        assert_eq!(l.config_digest.as_deref(), Some(c.as_str()));
        // No manifest yet: the lockfile alone cannot be realized.
        assert!(l.realizable.is_none());
        std::fs::write(root.join("agents/a/bottle.json"), "{}").unwrap();
        let l = locate(&Reference::Agent("a".into()), None, at).unwrap();
        assert_eq!(l.realizable, Some((root.to_path_buf(), "a".into())));
        // Another digest of the same agent: the lockfile says nothing about it.
        let other = format!("sha256:{}", "e".repeat(64));
        let r = Reference::AgentDigest {
            agent: "a".into(),
            digest: other.clone(),
        };
        let l = locate(&r, None, at).unwrap();
        assert_eq!(
            (l.digest.as_str(), l.config_digest, l.realizable),
            (other.as_str(), None, None)
        );
    }

    #[test]
    fn a_bad_config_digest_in_the_lockfile_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lockfiles")).unwrap();
        std::fs::write(
            dir.path().join("lockfiles/a.lock.json"),
            format!(r#"{{"image":{{"manifest_digest":"{D}","config_digest":"sha256:xyz"}}}}"#),
        )
        .unwrap();
        let e = read_lock(dir.path(), "a").unwrap_err();
        assert!(e.to_string().contains("image.config_digest"), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
    }
}
