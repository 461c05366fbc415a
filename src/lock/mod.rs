//! `bottle lock` and `bottle check`: resolve an agent's inputs to hashes, pin
//! what comes from the network, build the image, push it, and keep the
//! lockfile; or prove that a lockfile is fresh and reproducible.
//!
//! Invariants:
//! - validation (manifest, recipe, skills, local paths, lockfile) happens
//!   before any network step, so bad input is always exit 2 and a network
//!   problem is exit 3;
//! - plain `lock` changes a pin (base digest, fetched hash, sidecar image)
//!   only when the manifest changed what it pins; `--update` re-resolves all;
//! - when the inputs hash equals the lockfile's, nothing is rebuilt and the
//!   lockfile is not written; the image is only confirmed (every blob) in
//!   the registry, or in the local store when no registry is configured;
//! - the local blob store is the image's home; a registry is optional and
//!   `--offline` never touches the network (nothing is pushed or checked);
//! - the lockfile is written last, atomically, and only after the image was
//!   built (and pushed, when a registry is named): a failed `lock` leaves
//!   the old lockfile intact;
//! - `check` and `lock` compute digests through the same code
//!   (`resolve::image_spec` then `oci::build`).

pub mod fetch;
pub mod lockfile;
pub mod remote;
pub mod resolve;

use std::path::{Path, PathBuf};

use crate::error::{Classify, ExitKind};
use crate::manifest::{self, Agent, From, ManifestError};
use crate::oci::{self, BlobStore, OciError};
use crate::policy::SidecarKind;

use fetch::FetchCache;
use lockfile::{LockedBase, LockedImage, LockedInput, LockedLayer, LockedSidecar, Lockfile};
use resolve::PinnedFetch;

/// The upstream pipelock image, pinned by digest in lockfiles of agents that
/// use the pipelock sidecar.
pub const PIPELOCK_IMAGE: &str = "ghcr.io/luckypipewrench/pipelock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("{file}: {}{problem}\n  help: restore it with `git checkout -- {file}`, or delete it and run `bottle lock`", if .field.is_empty() { String::new() } else { format!("field `{}`: ", .field) })]
    Lockfile {
        file: String,
        field: String,
        problem: String,
    },
    #[error(
        "{url}: the download has sha256 {actual}, but {pinned_by} pins {expected}\n  \
         help: if the new content is trusted, change the pin (the recipe's `sha256` when it asserts one, else `bottle lock --update`); otherwise the source changed under you"
    )]
    FetchMismatch {
        url: String,
        expected: String,
        actual: String,
        pinned_by: String,
    },
    #[error(
        "{url}: cannot read: {source}\n  help: the recipe names this file on this machine; install it (for /bin/busybox: `apt-get install busybox-static`) or fix the URL"
    )]
    FetchLocal { url: String, source: std::io::Error },
    #[error("{url}: the server answered HTTP {status}\n  help: check the URL in the recipe")]
    FetchStatus { url: String, status: u16 },
    #[error("{url}: cannot unpack: {reason}")]
    Unpack { url: String, reason: String },
    #[error(
        "cannot {what}: {reason}\n  help: this step needs the network; connect, or use inputs already in the cache"
    )]
    Network { what: String, reason: String },
    #[error(
        "--offline: {what} needs the network\n  help: run without --offline once, so the input is pinned and cached"
    )]
    Offline { what: String },
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Debian(#[from] crate::debian::DebError),
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl LockError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> LockError {
        LockError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn lockfile(file: &str, field: &str, problem: &str) -> LockError {
        LockError::Lockfile {
            file: file.to_string(),
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }
}

impl Classify for LockError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            LockError::Manifest(e) => e.exit_kind(),
            LockError::Oci(e) => e.exit_kind(),
            LockError::Lockfile { .. }
            | LockError::FetchMismatch { .. }
            | LockError::FetchStatus { .. }
            | LockError::Unpack { .. } => ExitKind::BadInput,
            LockError::FetchLocal { .. }
            | LockError::Network { .. }
            | LockError::Offline { .. }
            | LockError::Io { .. } => ExitKind::Environment,
            LockError::Registry(e) => e.exit_kind(),
            LockError::Debian(e) => e.exit_kind(),
            LockError::Internal(_) => ExitKind::Failure,
        }
    }
}

/// What `lock` and `check` need to know about where they run.
#[derive(Debug, Clone)]
pub struct Context {
    /// Project root (holds `agents/`, `images/`, `lockfiles/`).
    pub root: PathBuf,
    /// Cache root: `fetch/` (downloads) and `oci/` (blob store) live under it.
    pub cache_root: PathBuf,
    /// Registry `host[:port]` to publish to; `None`: the image lives in the
    /// local blob store only (share it later with `bottle push`).
    pub registry: Option<String>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Never touch the network (exit 3 where it would be needed).
    pub offline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOutcome {
    /// `<agent>@sha256:<hex>`
    pub reference: String,
    pub manifest_digest: String,
    /// False when the inputs hash matched and nothing was built.
    pub rebuilt: bool,
    pub lockfile_written: bool,
    pub push: remote::PushStats,
    /// Human detail for stderr.
    pub notes: Vec<String>,
}

pub fn repository(agent: &str) -> String {
    format!("bottle/{agent}")
}

struct Resolved {
    agent: Agent,
    base: LockedBase,
    fetched: Vec<PinnedFetch>,
    sidecar_image: Option<String>,
    inputs: Vec<LockedInput>,
    inputs_hash: String,
    packages: Option<lockfile::LockedPackages>,
}

/// The base image pin: kept from `old` unless the reference or platform
/// changed or `update` asks; resolved on the registry otherwise.
async fn pin_base(
    ctx: &Context,
    agent: &Agent,
    old: Option<&Lockfile>,
    update: bool,
    platform: &str,
    store: &BlobStore,
    notes: &mut Vec<String>,
) -> Result<LockedBase, LockError> {
    Ok(match &agent.recipe.from {
        From::Scratch => LockedBase {
            reference: "scratch".into(),
            digest: None,
            platform: platform.to_string(),
        },
        From::Reference(r) => {
            let kept = old.filter(|_| !update).and_then(|o| {
                (o.base.reference == *r && o.base.platform == platform)
                    .then(|| o.base.digest.clone())
                    .flatten()
            });
            let digest = match kept {
                Some(d) => d,
                None => {
                    if ctx.offline {
                        return Err(LockError::Offline {
                            what: format!("pinning base image `{r}`"),
                        });
                    }
                    notes.push(format!("resolving base image {r} for {platform}"));
                    remote::resolve_digest(r, platform, store).await?
                }
            };
            LockedBase {
                reference: r.clone(),
                digest: Some(digest),
                platform: platform.to_string(),
            }
        }
    })
}

/// Turn `old` pins and the manifest into the full pin set (network where a
/// pin is missing or `update` asks for it).
async fn resolve_pins(
    ctx: &Context,
    agent: Agent,
    old: Option<&Lockfile>,
    update: bool,
    store: &BlobStore,
    notes: &mut Vec<String>,
) -> Result<Resolved, LockError> {
    let platform = oci::Platform::parse(&ctx.platform)?.to_string();
    let lockfile_name = lockfile::rel_path(&agent.name);

    let base = pin_base(ctx, &agent, old, update, &platform, store, notes).await?;

    // Fetched inputs.
    let cache = FetchCache::open(&ctx.cache_root)?;
    let mut fetched = Vec::new();
    for f in &agent.recipe.fetch {
        let name = format!("fetch:/{}", f.dest);
        let old_pin = old
            .filter(|_| !update)
            .and_then(|o| {
                o.inputs
                    .iter()
                    .find(|i| i.name == name && i.url.as_deref() == Some(&f.url))
            })
            .map(|i| i.hash.trim_start_matches("sha256:").to_string());
        let file = agent.recipe.file.clone().unwrap_or_default();
        let (expected, pinned_by) = match (&f.sha256, old_pin) {
            (Some(a), _) => (Some(a.clone()), format!("{file} (`{}.sha256`)", f.field)),
            (None, Some(p)) => (Some(p), lockfile_name.clone()),
            (None, None) => (None, String::new()),
        };
        // A known pin is enough to decide staleness; the content is only
        // needed (and verified) when an image is built.
        let hex = match expected {
            Some(h) => h,
            None => {
                notes.push(format!("fetching {}", f.url));
                cache.ensure(&f.url, None, "", ctx.offline).await?
            }
        };
        fetched.push(PinnedFetch {
            fetch: f.clone(),
            cached: cache.path(&hex),
            sha256: hex,
            pinned_by,
        });
    }

    // Debian packages (see `crate::debian`).
    let packages = match &agent.recipe.packages {
        Some(p) => {
            let old = old.and_then(|o| o.packages.as_ref());
            let pins = crate::debian::pin(p, &platform, old, update, &cache, ctx.offline, notes);
            Some(pins.await?)
        }
        None => None,
    };

    // Sidecar image.
    let sidecar_image = match agent.sidecar {
        SidecarKind::Builtin => None,
        SidecarKind::Pipelock => {
            let kept = old
                .filter(|_| !update)
                .filter(|o| o.sidecar.kind == SidecarKind::Pipelock)
                .and_then(|o| o.sidecar.image.clone());
            match kept {
                Some(i) => Some(i),
                None => {
                    if ctx.offline {
                        return Err(LockError::Offline {
                            what: format!("pinning the pipelock sidecar image `{PIPELOCK_IMAGE}`"),
                        });
                    }
                    // The release whose config schema bottle's generated
                    // config is checked against (tests/data/pipelock-keys.txt),
                    // not whatever `latest` is today.
                    let tagged = format!("{PIPELOCK_IMAGE}:{}", crate::egress::PIPELOCK_TAG);
                    notes.push(format!("resolving sidecar image {tagged}"));
                    let d = remote::resolve_digest(&tagged, &platform, store).await?;
                    Some(format!("{PIPELOCK_IMAGE}@{d}"))
                }
            }
        }
    };

    let pairs: Vec<(String, String)> = fetched
        .iter()
        .map(|p| (p.fetch.url.clone(), p.sha256.clone()))
        .collect();
    let inputs = resolve::with_packages(resolve::inputs(&agent, &pairs), packages.as_ref());
    let inputs_hash = resolve::inputs_hash(&base, sidecar_image.as_deref(), &inputs);
    Ok(Resolved {
        agent,
        base,
        fetched,
        sidecar_image,
        inputs,
        inputs_hash,
        packages,
    })
}

/// `bottle lock <agent>`.
pub async fn lock(ctx: &Context, agent_name: &str, update: bool) -> Result<LockOutcome, LockError> {
    let agent = manifest::load_agent(&ctx.root, agent_name)?;
    let old = Lockfile::read(&ctx.root, agent_name)?;
    let mut notes = Vec::new();
    let store = BlobStore::open(ctx.cache_root.join("oci"))?;
    let r = resolve_pins(ctx, agent, old.as_ref(), update, &store, &mut notes).await?;
    let policy = r.agent.policy(r.sidecar_image.clone());
    let repo = repository(agent_name);

    if let Some(old) = old.as_ref().filter(|o| {
        !update && o.inputs_hash == r.inputs_hash && o.policy == policy && o.env == r.agent.env
    }) {
        // Nothing changed: confirm the image is where it should be.
        let digest = old.image.manifest_digest.clone();
        if let Some(push) = confirm(ctx, &repo, &old.image, &store, &mut notes).await? {
            return Ok(LockOutcome {
                reference: format!("{agent_name}@{digest}"),
                manifest_digest: digest,
                rebuilt: false,
                lockfile_written: false,
                push,
                notes,
            });
        }
    }

    ensure_fetched(ctx, &r.fetched, &mut notes).await?;
    if let Some(d) = &r.base.digest {
        remote::ensure_base(&r.base.reference, d, &r.base.platform, &store, ctx.offline).await?;
    }
    let debs = package_layers(ctx, &r.agent, r.packages.as_ref()).await?;
    let spec = resolve::image_spec_with(&r.agent, &r.base, &r.fetched, debs, &policy)?;
    let built = oci::build(&spec, &store)?;
    let push = match publish_to(ctx) {
        Some(registry) => remote::push(registry, &repo, &built, &store).await?,
        None => {
            notes.push(not_pushed(ctx, agent_name));
            remote::PushStats::default()
        }
    };
    let lock = Lockfile {
        schema: lockfile::LOCK_SCHEMA,
        agent: agent_name.to_string(),
        builder: resolve::BUILDER_FORMAT,
        inputs_hash: r.inputs_hash,
        base: r.base,
        inputs: r.inputs,
        policy,
        env: r.agent.env.clone(),
        sidecar: LockedSidecar {
            kind: r.agent.sidecar,
            image: r.sidecar_image,
        },
        image: locked_image(&repo, &built),
        packages: r.packages,
    };
    let written = old.as_ref() != Some(&lock);
    if written {
        lock.write(&ctx.root)?;
        notes.push(format!("wrote {}", lockfile::rel_path(agent_name)));
    }
    Ok(LockOutcome {
        reference: format!("{agent_name}@{}", built.manifest_digest),
        manifest_digest: built.manifest_digest,
        rebuilt: true,
        lockfile_written: written,
        push,
        notes,
    })
}

/// The registry `lock` publishes to: the configured one, unless `--offline`
/// forbids the network. `None`: the image lives in the local store only.
fn publish_to(ctx: &Context) -> Option<&str> {
    ctx.registry.as_deref().filter(|_| !ctx.offline)
}

/// The stderr line saying where a locally stored image is and how to share it.
fn not_pushed(ctx: &Context, agent: &str) -> String {
    match &ctx.registry {
        Some(r) => format!(
            "--offline: not pushed to {r}; push it later with `bottle lock {agent}` or `bottle push {agent} --to {r}/{}`",
            repository(agent)
        ),
        None => format!(
            "stored in the local store {} (no registry configured); share it with `bottle push {agent} --to <registry>/{}`, or `bottle export {agent} -o {agent}.tar`",
            ctx.cache_root.join("oci").display(),
            repository(agent)
        ),
    }
}

/// The no-op `lock`: is the locked image where it should be? In the
/// registry (manifest and every blob; what is lost is pushed again from
/// the store), or, with no registry (or `--offline`), whole in the store.
/// `None`: it is not, and the caller rebuilds it.
async fn confirm(
    ctx: &Context,
    repo: &str,
    image: &LockedImage,
    store: &BlobStore,
    notes: &mut Vec<String>,
) -> Result<Option<remote::PushStats>, LockError> {
    let Some(registry) = publish_to(ctx) else {
        let whole = oci::BuiltImage::from_store(&image.manifest_digest, store)
            .is_ok_and(|i| i.layers.iter().all(|l| store.has(&l.digest)));
        if !whole {
            notes.push("the image is not in the local store; rebuilding".into());
            return Ok(None);
        }
        notes.push("up to date; nothing to build".into());
        if ctx.offline && ctx.registry.is_some() {
            notes.push("--offline: the registry was not checked".into());
        }
        return Ok(Some(remote::PushStats::default()));
    };
    match remote::ensure_image(registry, repo, image, store).await? {
        remote::Presence::Complete => {
            notes.push("up to date; nothing to build".into());
            Ok(Some(remote::PushStats::default()))
        }
        remote::Presence::Repaired { missing, push } => {
            notes.push(format!(
                "registry {registry} had lost {} of the image ({}); pushed again from the local store ({} blobs)",
                plural(missing.len()),
                missing.join(", "),
                push.blobs_uploaded
            ));
            Ok(Some(push))
        }
        remote::Presence::Missing(missing) => {
            notes.push(format!(
                "registry {registry} lacks {} of the image ({}) and the local store cannot supply it; rebuilding",
                plural(missing.len()),
                missing.join(", ")
            ));
            Ok(None)
        }
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 part".into()
    } else {
        format!("{n} parts")
    }
}

/// Make sure every pinned download is in the cache, downloading (and
/// verifying against its pin) what is missing.
async fn ensure_fetched(
    ctx: &Context,
    fetched: &[PinnedFetch],
    notes: &mut Vec<String>,
) -> Result<(), LockError> {
    let cache = FetchCache::open(&ctx.cache_root)?;
    for p in fetched {
        if !cache.has(&p.sha256) {
            notes.push(format!("fetching {}", p.fetch.url));
        }
        cache
            .ensure(&p.fetch.url, Some(&p.sha256), &p.pinned_by, ctx.offline)
            .await?;
    }
    Ok(())
}

/// Layers of the pinned Debian packages (fetched by pinned path when not
/// cached); none when the recipe has no `packages`.
async fn package_layers(
    ctx: &Context,
    agent: &Agent,
    pins: Option<&lockfile::LockedPackages>,
) -> Result<Vec<oci::spec::LayerSpec>, LockError> {
    let (Some(p), Some(pins)) = (&agent.recipe.packages, pins) else {
        return Ok(Vec::new());
    };
    let cache = FetchCache::open(&ctx.cache_root)?;
    let by = lockfile::rel_path(&agent.name);
    crate::debian::archive::ensure_debs(p, pins, &cache, ctx.offline, &by).await?;
    resolve::package_layers(agent, pins, &cache)
}

fn locked_image(repo: &str, built: &oci::BuiltImage) -> LockedImage {
    LockedImage {
        repository: repo.to_string(),
        manifest_digest: built.manifest_digest.clone(),
        config_digest: built.config_digest.clone(),
        layers: built
            .layers
            .iter()
            .map(|l| LockedLayer {
                name: l.name.clone(),
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
            })
            .collect(),
    }
}

/// The verdict of `check` on one agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub agent: String,
    /// (a) the lockfile matches the manifest and its inputs.
    pub up_to_date: bool,
    /// (b) a rebuild from the lockfile gives its digest; absent when (a) failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproducible: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt_digest: Option<String>,
    /// What differs, one line each.
    pub problems: Vec<String>,
    pub status: CheckStatus,
    /// The first input, layer or lockfile field that differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<Difference>,
}

/// `check`'s verdict in one word (README, "check --json").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Up to date and rebuilds to its digest.
    Ok,
    /// The manifest or an input changed since the lockfile was written.
    Stale,
    /// Up to date, but the rebuild has another digest.
    Differs,
    /// The agent has no lockfile.
    Unlocked,
}

/// What `check` found different first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `input`, `layer`, `config` (the image config) or `field` (a
    /// lockfile field: `base`, `policy`, `env`, `sidecar`, `packages`,
    /// `inputs_hash`, `lockfile`).
    pub kind: &'static str,
    /// The input or layer name, or the field.
    pub name: String,
    /// The problem line that says it.
    pub detail: String,
}

impl Difference {
    /// Classify one of `check`'s problem lines (this module writes them:
    /// "input `<name>` …", "fetch:/<path>: …", "<field>: …").
    fn of_problem(line: &str) -> Difference {
        let detail = line.to_string();
        if let Some(rest) = line.strip_prefix("input `") {
            if let Some((name, _)) = rest.split_once('`') {
                return Difference {
                    kind: "input",
                    name: name.into(),
                    detail,
                };
            }
        }
        let head = line.split(": ").next().unwrap_or(line);
        if head.starts_with("fetch:/") {
            return Difference {
                kind: "input",
                name: head.into(),
                detail,
            };
        }
        Difference {
            kind: "field",
            name: head.split_whitespace().next().unwrap_or(head).into(),
            detail,
        }
    }
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.up_to_date && self.reproducible == Some(true)
    }
}

/// `bottle check <agent>`: never writes the lockfile, never pushes.
pub async fn check(ctx: &Context, agent_name: &str) -> Result<CheckReport, LockError> {
    Ok(rebuild_from_lock(ctx, agent_name).await?.0)
}

/// What `check` does, also returning the rebuilt image (in the store): `run`
/// realizes a locked image this way when nothing else has it, and uses it
/// only when the report is ok (the rebuild has the locked digest).
pub async fn rebuild_from_lock(
    ctx: &Context,
    agent_name: &str,
) -> Result<(CheckReport, Option<oci::BuiltImage>), LockError> {
    let agent = manifest::load_agent(&ctx.root, agent_name)?;
    let mut report = CheckReport {
        agent: agent_name.to_string(),
        up_to_date: false,
        reproducible: None,
        locked_digest: None,
        rebuilt_digest: None,
        problems: Vec::new(),
        status: CheckStatus::Stale,
        first_difference: None,
    };
    let file = lockfile::rel_path(agent_name);
    let Some(lock) = Lockfile::read(&ctx.root, agent_name)? else {
        let line = format!("{file} does not exist: run `bottle lock {agent_name}`");
        report.status = CheckStatus::Unlocked;
        report.first_difference = Some(Difference {
            kind: "field",
            name: "lockfile".into(),
            detail: line.clone(),
        });
        report.problems.push(line);
        return Ok((report, None));
    };
    report.locked_digest = Some(lock.image.manifest_digest.clone());

    // Pins come only from the lockfile: check never re-resolves.
    let mut problems = Vec::new();
    let base = match &agent.recipe.from {
        From::Scratch => LockedBase {
            reference: "scratch".into(),
            digest: None,
            platform: lock.base.platform.clone(),
        },
        From::Reference(r) => {
            if lock.base.reference != *r || lock.base.digest.is_none() {
                problems.push(format!(
                    "base: the recipe names `{r}`, the lockfile pins `{}`",
                    lock.base.reference
                ));
            }
            lock.base.clone()
        }
    };
    let mut pairs = Vec::new();
    for f in &agent.recipe.fetch {
        let name = format!("fetch:/{}", f.dest);
        match lock
            .inputs
            .iter()
            .find(|i| i.name == name && i.url.as_deref() == Some(&f.url))
        {
            Some(i) => {
                let hex = i.hash.trim_start_matches("sha256:").to_string();
                if f.sha256.as_ref().is_some_and(|a| *a != hex) {
                    problems.push(format!(
                        "{name}: the recipe asserts sha256 {}, the lockfile pins {hex}",
                        f.sha256.as_deref().unwrap_or_default()
                    ));
                }
                pairs.push((f.url.clone(), hex));
            }
            None => {
                problems.push(format!("{name}: {} is not pinned in the lockfile", f.url));
                pairs.push((f.url.clone(), String::new()));
            }
        }
    }
    let sidecar_image = match agent.sidecar {
        SidecarKind::Builtin => None,
        SidecarKind::Pipelock => {
            if lock.sidecar.image.is_none() {
                problems.push("sidecar: pipelock image is not pinned".into());
            }
            lock.sidecar.image.clone()
        }
    };
    if let Some(p) = &agent.recipe.packages {
        let stale = crate::debian::archive::arch_for(p, &base.platform)
            .map(|a| crate::debian::archive::request_hash(p, &a))
            .ok()
            != lock.packages.as_ref().map(|l| l.request.clone());
        if stale {
            problems.push(
                "packages: the recipe's `packages` changed since the lockfile pinned them".into(),
            );
        }
    }
    let packages = lock
        .packages
        .clone()
        .filter(|_| agent.recipe.packages.is_some());
    let inputs = resolve::with_packages(resolve::inputs(&agent, &pairs), packages.as_ref());
    let inputs_hash = resolve::inputs_hash(&base, sidecar_image.as_deref(), &inputs);
    if inputs_hash != lock.inputs_hash {
        let mut diffs = diff_inputs(&lock.inputs, &inputs);
        if diffs.is_empty() && problems.is_empty() {
            // Fetch pins come from the lockfile itself, so a pin changed by
            // hand only shows as a different inputs hash: name the input by
            // comparing each pin with what its source has now.
            diffs = changed_pins(ctx, &agent, &pairs, &file).await;
        }
        if diffs.is_empty() && problems.is_empty() {
            problems.push(format!(
                "inputs_hash: the lockfile says {}, the inputs give {inputs_hash} (builder format, base or sidecar pin differ)",
                lock.inputs_hash
            ));
        }
        problems.extend(diffs);
    }
    let policy = agent.policy(sidecar_image.clone());
    if lock.policy != policy {
        problems.push("policy: the lockfile's policy is not the manifest's".into());
    }
    if lock.env != agent.env {
        problems.push("env: the lockfile's env names are not the manifest's".into());
    }
    if lock.sidecar.kind != agent.sidecar {
        problems.push("sidecar: the lockfile's sidecar kind is not the manifest's".into());
    }
    if !problems.is_empty() {
        report.first_difference = problems.first().map(|l| Difference::of_problem(l));
        problems.push(format!("run `bottle lock {agent_name}` and commit {file}"));
        report.problems = problems;
        return Ok((report, None));
    }
    report.up_to_date = true;

    // (b) Rebuild from the pins and compare.
    let cache = FetchCache::open(&ctx.cache_root)?;
    let fetched: Vec<PinnedFetch> = agent
        .recipe
        .fetch
        .iter()
        .zip(&pairs)
        .map(|(f, (_, hex))| PinnedFetch {
            fetch: f.clone(),
            cached: cache.path(hex),
            sha256: hex.clone(),
            pinned_by: file.clone(),
        })
        .collect();
    ensure_fetched(ctx, &fetched, &mut Vec::new()).await?;
    let store = BlobStore::open(ctx.cache_root.join("oci"))?;
    if let Some(d) = &base.digest {
        remote::ensure_base(&base.reference, d, &base.platform, &store, ctx.offline).await?;
    }
    let debs = package_layers(ctx, &agent, packages.as_ref()).await?;
    let spec = resolve::image_spec_with(&agent, &base, &fetched, debs, &policy)?;
    let built = oci::build(&spec, &store)?;
    report.rebuilt_digest = Some(built.manifest_digest.clone());
    let same = built.manifest_digest == lock.image.manifest_digest;
    report.reproducible = Some(same);
    report.status = if same {
        CheckStatus::Ok
    } else {
        CheckStatus::Differs
    };
    if !same {
        let rebuilt = locked_image(&lock.image.repository, &built);
        report.problems = diff_images(&lock.image, &rebuilt, &store);
        report.first_difference = Some(first_layer_difference(&lock.image, &rebuilt));
    }
    Ok((report, Some(built)))
}

/// One line per fetched input whose lockfile pin is not what its source
/// gives (the source is read only when the pinned content is not cached).
async fn changed_pins(
    ctx: &Context,
    agent: &Agent,
    pairs: &[(String, String)],
    file: &str,
) -> Vec<String> {
    let Ok(cache) = FetchCache::open(&ctx.cache_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (f, (_, hex)) in agent.recipe.fetch.iter().zip(pairs) {
        // Unreachable sources say nothing about the pin; the generic
        // inputs-hash line stands.
        if let Err(LockError::FetchMismatch { actual, .. }) =
            cache.ensure(&f.url, Some(hex), file, ctx.offline).await
        {
            out.push(format!(
                "input `fetch:/{}` ({}) changed: lockfile sha256:{hex}, the source has sha256:{}",
                f.dest,
                f.url,
                actual.trim_start_matches("sha256:")
            ));
        }
    }
    out
}

/// One line per input that was added, removed or changed.
fn diff_inputs(locked: &[LockedInput], now: &[LockedInput]) -> Vec<String> {
    let mut out = Vec::new();
    for n in now {
        match locked.iter().find(|l| l.name == n.name) {
            None => out.push(format!("input `{}` is new (not in the lockfile)", n.name)),
            Some(l) if l != n => {
                let what = n.source.as_deref().or(n.url.as_deref()).unwrap_or("");
                out.push(format!(
                    "input `{}` ({what}) changed: lockfile {}, now {}",
                    n.name, l.hash, n.hash
                ));
            }
            Some(_) => {}
        }
    }
    for l in locked {
        if !now.iter().any(|n| n.name == l.name) {
            out.push(format!(
                "input `{}` is gone (still in the lockfile)",
                l.name
            ));
        }
    }
    out
}

/// The lowest layer that differs (by position), else the image config.
fn first_layer_difference(locked: &LockedImage, rebuilt: &LockedImage) -> Difference {
    let n = locked.layers.len().max(rebuilt.layers.len());
    for i in 0..n {
        match (locked.layers.get(i), rebuilt.layers.get(i)) {
            (Some(l), Some(r)) if l.name == r.name && l.digest == r.digest => {}
            (l, r) => {
                let name = r.or(l).map(|x| x.name.clone()).unwrap_or_default();
                let detail = format!(
                    "layer {i} `{name}`: lockfile {}, rebuild {}",
                    l.map_or("(none)", |x| x.digest.as_str()),
                    r.map_or("(none)", |x| x.digest.as_str()),
                );
                return Difference {
                    kind: "layer",
                    name,
                    detail,
                };
            }
        }
    }
    if locked.config_digest != rebuilt.config_digest {
        return Difference {
            kind: "config",
            name: "config".into(),
            detail: format!(
                "image config: lockfile {}, rebuild {}",
                locked.config_digest, rebuilt.config_digest
            ),
        };
    }
    Difference {
        kind: "field",
        name: "image.manifest_digest".into(),
        detail: format!(
            "image.manifest_digest: the lockfile says {}, the rebuild gives {} (same layers and config)",
            locked.manifest_digest, rebuilt.manifest_digest
        ),
    }
}

/// One line per layer (by name) or config that differs, and, when the
/// locked layer is still in the blob store, one line per file that differs.
fn diff_images(locked: &LockedImage, rebuilt: &LockedImage, store: &BlobStore) -> Vec<String> {
    let mut out = vec![format!(
        "manifest digest: the lockfile says {}, the rebuild gives {}",
        locked.manifest_digest, rebuilt.manifest_digest
    )];
    if locked.config_digest != rebuilt.config_digest {
        out.push(format!(
            "image config differs: lockfile {}, rebuild {}",
            locked.config_digest, rebuilt.config_digest
        ));
    }
    for (i, r) in rebuilt.layers.iter().enumerate() {
        match locked.layers.get(i) {
            Some(l) if l.name == r.name && l.digest == r.digest => {}
            Some(l) => {
                out.push(format!(
                    "layer {i} `{}` differs: lockfile `{}` {}, rebuild {}",
                    r.name, l.name, l.digest, r.digest
                ));
                if store.has(&l.digest) {
                    if let Ok(files) = oci::diff::diff_layer_blobs(store, &l.digest, &r.digest) {
                        out.extend(files.into_iter().map(|f| format!("  {}: {f}", r.name)));
                    }
                }
            }
            None => out.push(format!("layer {i} `{}` is not in the lockfile", r.name)),
        }
    }
    if locked.layers.len() > rebuilt.layers.len() {
        out.push(format!(
            "the lockfile lists {} layers, the rebuild has {}",
            locked.layers.len(),
            rebuilt.layers.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_line_names_its_input_or_field() {
        let d = Difference::of_problem(
            "input `skill:greet` (agents/hello/skills/greet) changed: lockfile a, now b",
        );
        assert_eq!((d.kind, d.name.as_str()), ("input", "skill:greet"));
        let d =
            Difference::of_problem("fetch:/usr/bin/x: https://e/x is not pinned in the lockfile");
        assert_eq!((d.kind, d.name.as_str()), ("input", "fetch:/usr/bin/x"));
        let d = Difference::of_problem("policy: the lockfile's policy is not the manifest's");
        assert_eq!((d.kind, d.name.as_str()), ("field", "policy"));
        let d = Difference::of_problem("inputs_hash: the lockfile says a, the inputs give b");
        assert_eq!((d.kind, d.name.as_str()), ("field", "inputs_hash"));
    }

    #[test]
    fn the_lowest_differing_layer_is_named() {
        let layer = |name: &str, d: char| LockedLayer {
            name: name.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            diff_id: String::new(),
            size: 1,
        };
        let image = |layers| LockedImage {
            repository: "bottle/a".into(),
            manifest_digest: String::new(),
            config_digest: "c".into(),
            layers,
        };
        let a = image(vec![
            layer("tools", '1'),
            layer("skill:s", '2'),
            layer("config", '3'),
        ]);
        let b = image(vec![
            layer("tools", '1'),
            layer("skill:s", '4'),
            layer("config", '5'),
        ]);
        let d = first_layer_difference(&a, &b);
        assert_eq!((d.kind, d.name.as_str()), ("layer", "skill:s"));
        let d = first_layer_difference(&a, &a);
        assert_eq!(
            (d.kind, d.name.as_str()),
            ("field", "image.manifest_digest")
        );
        let mut c = a.clone();
        c.config_digest = "other".into();
        assert_eq!(first_layer_difference(&a, &c).kind, "config");
    }
}
