//! `bottle run`: resolve a reference to an exact digest, get it into the
//! engine (`acquire`: engine, store, registry or realized from the
//! lockfile), read the bottle's policy from the image, plan, and then start — internal network,
//! sidecar (config uploaded, secrets over stdin, ready), agent — attach,
//! and tear everything down in order on every path.
//!
//! Invariants:
//! - Nothing is created before the caller approved the plan (`prepare` only
//!   gets the image and inspects; `execute` creates).
//! - Every object is registered with the [`Teardown`] guard before the call
//!   that creates it, so a signal, an error or a panic at any point still
//!   removes it: agent, then sidecar, then networks, then temp files.
//! - Secret values are read from the host environment only while building
//!   the sidecar's secrets message (builtin sidecar: the agent gets
//!   placeholders) or, with pipelock, the agent's create body; they never
//!   enter the plan, a file, a label or argv.

pub mod audit;
pub mod capacity;
pub mod gc;
pub mod networks;
pub mod owner;
pub mod secrets;
pub mod session;
pub mod sidecar;
pub mod teardown;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::acquire::{self, AcquireError, Located, Source};
use crate::engine::{self, ContainerSpec, EngineError, EngineVersion, HomeMount, PullProgress};
use crate::netpool::{Pool, Subnet};
use crate::plan::{
    self, ImageFacts, PlanError, RunIdentity, RunOptions, RunPlan, SIDECAR_CONFIG_DIR, SidecarImage,
};
use crate::policy::{Limits, POLICY_LABEL, Policy, PolicyError, SidecarKind};
use crate::reference::Reference;

pub use teardown::Teardown;

/// Limits for the sidecar itself: a proxy needs little.
pub const SIDECAR_LIMITS: Limits = Limits {
    memory_mib: 256,
    cpu_millis: 1000,
    pids: 128,
    // Its /tmp; it writes nothing else.
    disk_mib: 64,
};
/// `bottle run`'s exit code when the egress sidecar stopped mid-session
/// (killed, crashed): the agent had no way out, so the run was ended.
pub const SIDECAR_LOST_EXIT: u8 = 4;
const SIDECAR_READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("image {reference}: {source}")]
    Policy {
        reference: String,
        #[source]
        source: PolicyError,
    },
    #[error(
        "`--dry-run` of {0} needs its policy without contacting the engine: use `<agent>` or `<agent>@sha256:…` with a lockfile in lockfiles/"
    )]
    DryRunNeedsLock(String),
    #[error("the egress sidecar {name} did not start: {reason}{}", logs_suffix(.logs))]
    Sidecar {
        name: String,
        reason: String,
        logs: Vec<String>,
    },
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    /// Admission: the engine or host cannot take another bottle now.
    #[error("cannot start another bottle: {0}")]
    Capacity(#[from] capacity::Refusal),
    #[error(transparent)]
    Networks(#[from] networks::RunNetworkError),
    #[error("stopped by {signal}")]
    Stopped { signal: &'static str, code: u8 },
    #[error("the egress sidecar {name} stopped mid-run ({how})")]
    SidecarLost { name: String, how: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn logs_suffix(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {}", logs.join("\n  "))
    }
}

impl crate::error::Classify for RunError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        use crate::error::ExitKind;
        match self {
            RunError::Engine(e) => e.exit_kind(),
            RunError::Egress(e) => e.exit_kind(),
            RunError::Acquire(e) => e.exit_kind(),
            RunError::Plan(e) => e.exit_kind(),
            RunError::Capacity(e) => e.exit_kind(),
            RunError::Networks(networks::RunNetworkError::Engine(e)) => e.exit_kind(),
            RunError::Networks(networks::RunNetworkError::Exhausted(_)) => ExitKind::Environment,
            RunError::Policy { .. } | RunError::DryRunNeedsLock(_) => ExitKind::BadInput,
            RunError::Sidecar { .. } | RunError::Stopped { .. } | RunError::SidecarLost { .. } => {
                ExitKind::Failure
            }
            RunError::Io { .. } => ExitKind::Environment,
        }
    }
}

/// What the caller asked to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub reference: Reference,
    /// Registry host for agent references; `None`: local store only.
    pub registry: Option<String>,
    pub root: Option<PathBuf>,
    pub options: RunOptions,
    pub allow_unpatched_engine: bool,
    /// Use this sidecar image (`repo@sha256:…`) instead of the default.
    pub sidecar_image: Option<String>,
    /// Where the run's networks get their subnets.
    pub pool: Pool,
}

/// Find the project root (see [`crate::acquire::project_root`]).
pub fn project_root(root: Option<&Path>) -> Result<PathBuf, RunError> {
    Ok(acquire::project_root(root)?)
}

fn locate(req: &Request) -> Result<Located, RunError> {
    Ok(acquire::locate(
        &req.reference,
        req.registry.as_deref(),
        || acquire::project_root(req.root.as_deref()),
    )?)
}

fn host_env_names() -> BTreeSet<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect()
}

fn identity() -> RunIdentity {
    RunIdentity {
        slug: owner::slug(),
        owner_pid: std::process::id(),
        owner_start: owner::self_start(),
        owner_host: owner::hostname(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

fn home_of(env: &[String]) -> String {
    env.iter()
        .find_map(|e| e.strip_prefix("HOME="))
        .filter(|h| h.starts_with('/') && *h != "/")
        .unwrap_or("/home/agent")
        .to_string()
}

/// The plan `--dry-run` prints: from the lockfile alone, no engine call.
pub fn dry_run(req: &Request) -> Result<(RunPlan, String), RunError> {
    let target = locate(req)?;
    let policy = target
        .policy
        .clone()
        .ok_or_else(|| RunError::DryRunNeedsLock(req.reference.to_string()))?;
    let image = ImageFacts {
        reference: target.to_string(),
        digest: target.digest.clone(),
        size: None,
        user: String::new(),
        home: "/home/agent".into(),
        volumes: vec![],
    };
    let kind = plan::sidecar_kind(&policy, &req.options);
    let side = sidecar_image_unresolved(&policy, kind);
    let mut options = req.options.clone();
    options.dns_mitigation = req.allow_unpatched_engine;
    let p = plan::plan(
        &policy,
        image,
        side,
        &options,
        &host_env_names(),
        &identity(),
    )?;
    let config = sidecar::config(&policy, &p)?;
    Ok((p, config))
}

fn sidecar_image_unresolved(policy: &Policy, kind: SidecarKind) -> SidecarImage {
    match kind {
        SidecarKind::Builtin => SidecarImage {
            image: "bottle builtin sidecar (built from this binary at run time)".into(),
            digest: None,
            user: String::new(),
        },
        SidecarKind::Pipelock => {
            let image = policy.sidecar.image.clone().unwrap_or_default();
            SidecarImage {
                digest: image.split_once('@').map(|(_, d)| d.to_string()),
                image,
                user: String::new(),
            }
        }
    }
}

/// A run that is approved-ready: image pulled and verified, plan built.
pub struct Prepared {
    pub docker: Docker,
    pub plan: RunPlan,
    pub engine_version: EngineVersion,
    pub sidecar_config: String,
    /// How the image got into the engine (the preflight says it).
    pub source: Source,
    /// Human detail about that (e.g. why the registry was passed over).
    pub notes: Vec<String>,
    pub pool: Pool,
    /// What the engine and host had when the run was admitted.
    pub capacity: capacity::Capacity,
}

/// Connect, check the engine, pull by digest, verify it, read the policy,
/// resolve the sidecar image, and plan. Creates nothing.
pub async fn prepare(
    req: &Request,
    progress: &mut (dyn FnMut(&PullProgress) + Send),
) -> Result<Prepared, RunError> {
    let mut phases = Phases::new();
    let target = locate(req)?;
    let docker = engine::connect().await?;
    let version = engine::version(&docker).await?;
    engine::check_version(&version, req.allow_unpatched_engine)?;
    let engine_info = engine::info(&docker).await?;
    phases.mark("engine connected and checked");

    let store = crate::oci::BlobStore::open_default().map_err(AcquireError::from)?;
    let acquired = acquire::to_engine(&docker, &target, &store, &mut *progress).await?;
    let reference = acquired.reference.clone();
    let info = engine::inspect_image(&docker, &reference).await?;
    let policy = Policy::from_label(info.labels.get(POLICY_LABEL).map(String::as_str)).map_err(
        |source| RunError::Policy {
            reference: reference.clone(),
            source,
        },
    )?;

    phases.mark("image in the engine and verified, policy read");
    let kind = plan::sidecar_kind(&policy, &req.options);
    let side = match (kind, &req.sidecar_image) {
        (_, Some(image)) => {
            engine::pull(&docker, image, &mut *progress).await?;
            let i = engine::inspect_image(&docker, image).await?;
            SidecarImage {
                digest: image.split_once('@').map(|(_, d)| d.to_string()),
                image: image.clone(),
                user: i.user,
            }
        }
        (SidecarKind::Builtin, None) => builtin_sidecar(&docker).await?,
        (SidecarKind::Pipelock, None) => {
            let image = policy
                .sidecar
                .image
                .clone()
                .ok_or(PlanError::NoPipelockImage)?;
            engine::pull(&docker, &image, &mut *progress).await?;
            let i = engine::inspect_image(&docker, &image).await?;
            SidecarImage {
                digest: image.split_once('@').map(|(_, d)| d.to_string()),
                image,
                user: i.user,
            }
        }
    };

    phases.mark("sidecar image ready");
    let facts = ImageFacts {
        reference: reference.clone(),
        digest: target.digest.clone(),
        size: info.size,
        user: info.user.clone(),
        home: home_of(&info.env),
        volumes: info.volumes.clone(),
    };
    let mut options = req.options.clone();
    options.dns_mitigation = !version.patched();
    let mut p = plan::plan(
        &policy,
        facts,
        side,
        &options,
        &host_env_names(),
        &identity(),
    )?;
    p.engine = Some(engine_info.security);
    let sidecar_config = sidecar::config(&policy, &p)?;
    // Admission last, on the freshest snapshot, and still before anything
    // is created.
    let capacity = capacity::survey(&docker, req.pool, engine_info.memory_total).await?;
    capacity::admit(&capacity, &demand(&p))?;
    phases.mark("admitted");
    Ok(Prepared {
        docker,
        plan: p,
        engine_version: version,
        sidecar_config,
        source: acquired.source,
        notes: acquired.notes,
        pool: req.pool,
        capacity,
    })
}

/// What this run asks of the host: its networks, and the agent's and the
/// sidecar's limits together.
fn demand(p: &RunPlan) -> capacity::Demand {
    capacity::Demand {
        subnets: if p.networks.egress_created { 2 } else { 1 },
        memory_mib: p.limits.memory_mib + SIDECAR_LIMITS.memory_mib,
        pids: p.limits.pids + SIDECAR_LIMITS.pids,
    }
}

/// The builtin sidecar's image, loaded into the engine from this binary.
async fn builtin_sidecar(docker: &Docker) -> Result<SidecarImage, RunError> {
    let id = crate::egress::image::ensure_builtin_image(docker).await?;
    Ok(SidecarImage {
        image: id.clone(),
        digest: Some(id),
        user: crate::egress::image::SIDECAR_USER.to_string(),
    })
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The agent's exit code, or 128+N when signal N stopped `bottle`.
    pub code: u8,
    pub signal: Option<&'static str>,
    /// One line about what the sidecar blocked, when it blocked anything.
    pub blocked: Option<String>,
    /// Why the run was ended early because the sidecar stopped (the code is
    /// then [`SIDECAR_LOST_EXIT`]).
    pub sidecar_lost: Option<String>,
    /// Teardown steps that failed (the run's result still stands).
    pub teardown_errors: Vec<EngineError>,
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, RunError> {
        let io = |source| RunError::Io {
            what: "installing signal handlers".into(),
            source,
        };
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(io)?,
            term: signal(SignalKind::terminate()).map_err(io)?,
            hup: signal(SignalKind::hangup()).map_err(io)?,
        })
    }

    async fn recv(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 130),
            _ = self.term.recv() => ("SIGTERM", 143),
            _ = self.hup.recv() => ("SIGHUP", 129),
        }
    }
}

/// With `BOTTLE_TIMINGS=1`, phase durations go to stderr (for benchmarks).
struct Phases {
    on: bool,
    last: std::time::Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            on: std::env::var_os("BOTTLE_TIMINGS").is_some_and(|v| v == "1"),
            last: std::time::Instant::now(),
        }
    }

    fn mark(&mut self, what: &str) {
        if self.on {
            let now = std::time::Instant::now();
            eprintln!(
                "bottle: timing: {what}: {} ms",
                (now - self.last).as_millis()
            );
            self.last = now;
        }
    }
}

/// Set once a signal asks the run to stop: (signal name, exit code).
pub type StopRx = tokio::sync::watch::Receiver<Option<(&'static str, u8)>>;

/// Resolves when a stop was requested.
pub async fn stopped(rx: &mut StopRx) -> (&'static str, u8) {
    loop {
        if let Some(v) = *rx.borrow_and_update() {
            return v;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Between start steps: stop now if a signal came in. Engine calls are never
/// abandoned half-way (a dropped create request may still create the
/// object after the teardown looked), so cancellation happens only here and
/// in the waits.
fn check(rx: &StopRx) -> Result<(), RunError> {
    match *rx.borrow() {
        Some((signal, code)) => Err(RunError::Stopped { signal, code }),
        None => Ok(()),
    }
}

/// Create, start, attach, and tear down. `interactive` forwards stdin.
pub async fn execute(prepared: Prepared, interactive: bool) -> Result<Outcome, RunError> {
    let mut signals = Signals::install()?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let listener = tokio::spawn(async move {
        let first = signals.recv().await;
        let _ = tx.send(Some(first));
        // Further signals while tearing down are absorbed: the teardown
        // must finish.
        loop {
            signals.recv().await;
        }
    });
    let mut guard = Teardown::new();
    let blocked: Arc<Mutex<sidecar::BlockedLog>> = Arc::default();

    let result = start_and_run(&prepared, &mut guard, interactive, blocked.clone(), rx).await;
    let mut phases = Phases::new();
    let teardown_errors = guard.finish(&prepared.docker).await;
    phases.mark("teardown");
    listener.abort();
    let mut sidecar_lost = None;
    let (code, signal) = match result {
        Ok(code) => (code, None),
        Err(RunError::Stopped { signal, code }) => (code, Some(signal)),
        Err(e @ RunError::SidecarLost { .. }) => {
            sidecar_lost = Some(e.to_string());
            (SIDECAR_LOST_EXIT, None)
        }
        Err(e) => return Err(e),
    };
    Ok(Outcome {
        code,
        signal,
        blocked: blocked.lock().ok().and_then(|b| b.summary()),
        sidecar_lost,
        teardown_errors,
    })
}

/// Owner and mode for the sidecar's config file: private to a numeric
/// user; world-readable (it holds hostnames only) when the image names its
/// user by name, which only the image's own /etc/passwd could resolve.
fn config_owner(user: &str) -> ((u64, u64), u32) {
    let mut it = user.split(':');
    match it.next().and_then(|u| u.parse::<u64>().ok()) {
        Some(uid) => {
            let gid = it.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
            ((uid, gid), 0o600)
        }
        None => ((0, 0), 0o644),
    }
}

async fn start_and_run(
    prepared: &Prepared,
    guard: &mut Teardown,
    interactive: bool,
    blocked: Arc<Mutex<sidecar::BlockedLog>>,
    mut stop: StopRx,
) -> Result<u8, RunError> {
    let Prepared {
        docker,
        plan,
        engine_version: version,
        sidecar_config,
        ..
    } = prepared;
    // The config also lives in a private temp dir for the run's lifetime
    // (mode 600), so an operator can read what the sidecar enforces.
    let dir = tempfile::Builder::new()
        .prefix(&owner::stamp(gc::RUN_DIR_PREFIX))
        .tempdir()
        .map_err(|source| RunError::Io {
            what: "creating the run's temp dir".into(),
            source,
        })?;
    let cfg_path = dir.path().join("egress.yaml");
    write_private(&cfg_path, sidecar_config.as_bytes())?;
    guard.tempdir(dir);

    let mut phases = Phases::new();
    let net = &plan.networks;
    check(&stop)?;
    guard.network(&net.internal);
    if net.egress_created {
        guard.network(&net.egress);
    }
    let subnets: Vec<Subnet> = networks::create(
        docker,
        plan,
        version,
        prepared.pool,
        &prepared.capacity.taken,
    )
    .await?;
    phases.mark(&format!(
        "networks created on {}",
        subnets
            .iter()
            .map(Subnet::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));

    check(&stop)?;
    // Registered before the sidecar that creates it: the home volume.
    guard.run_volumes(&plan.run_id);
    let home_volume = create_sidecar(docker, plan, sidecar_config, guard).await?;
    phases.mark("networks + sidecar created, config uploaded");

    // Agent: internal network only; secrets only in the create body. It is
    // created once the sidecar started (so its home volume is mounted and
    // the engine fills it with the image's home; creating runs nothing) and
    // started only once the sidecar is ready.
    let c = &plan.container;
    let (env, held) = secrets::agent_env(plan);
    let ca = if plan.sidecar.intercept {
        Some(secrets::RunCa::new(&plan.run_id)?)
    } else {
        None
    };
    let message = plan
        .sidecar
        .holds_secrets
        .then(|| secrets::message(plan, held, ca.as_ref()));
    check(&stop)?;
    guard.agent(&c.name);
    let spec = agent_spec(plan, env, ca.is_some(), home_volume, interactive);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (ready, created) = tokio::join!(
        start_sidecar(
            docker,
            plan,
            builtin_sidecar_kind(plan),
            message,
            blocked,
            &stop,
            started_tx
        ),
        async {
            // No start, no agent: the sidecar's failure is the error to report.
            match started_rx.await {
                Ok(()) => engine::create_container(docker, &spec).await.map(|_| ()),
                Err(_) => Ok(()),
            }
        },
    );
    ready?;
    created?;
    if let Some(ca) = &ca {
        // The bundle goes in at run time, so the image digest is unchanged.
        let bundle = secrets::bundle(docker, &c.name, ca).await;
        engine::upload_file(
            docker,
            &c.name,
            plan::AGENT_CA_DIR,
            plan::AGENT_CA_FILE,
            &bundle,
            0o644,
            (0, 0),
        )
        .await?;
    }
    phases.mark("agent created");
    check(&stop)?;
    // From here on a sidecar that stops leaves the agent with no way out:
    // say so at once and end the run.
    let lost = watch_sidecar(docker, &plan.sidecar.name);
    let code =
        session::run_agent(docker, &c.name, c.tty, interactive, &mut stop, lost.rx()).await?;
    phases.mark("agent ran");
    Ok(code.clamp(0, 255) as u8)
}

/// The agent's create body: internal network only; `env` from
/// [`secrets::agent_env`] (placeholders with the builtin sidecar); a volume
/// for the run CA bundle when `ca`.
fn agent_spec(
    plan: &RunPlan,
    env: Vec<String>,
    ca: bool,
    home_volume: String,
    interactive: bool,
) -> ContainerSpec<'_> {
    let c = &plan.container;
    ContainerSpec {
        name: &c.name,
        image: &plan.image.reference,
        user: &c.user,
        env,
        cmd: c.command.clone(),
        tty: c.tty,
        stdin: interactive,
        labels: &c.labels,
        network: &plan.networks.internal,
        limits: plan.limits,
        dns: c.dns.clone(),
        volumes: if ca {
            vec![plan::AGENT_CA_DIR.into()]
        } else {
            vec![]
        },
        image_volumes: plan.image.volumes.clone(),
        home: Some(HomeMount::Use {
            volume: home_volume,
            target: c.home.clone(),
        }),
        workspace: c.workspace.as_deref(),
    }
}

fn builtin_sidecar_kind(plan: &RunPlan) -> bool {
    plan.sidecar.kind == SidecarKind::Builtin
}

/// Create the sidecar on the internal network, join it to the egress one,
/// upload its config; it holds the agent's home volume. Returns that
/// volume's name.
async fn create_sidecar(
    docker: &Docker,
    plan: &RunPlan,
    sidecar_config: &str,
    guard: &mut Teardown,
) -> Result<String, RunError> {
    let s = &plan.sidecar;
    let net = &plan.networks;
    let home_labels = plan.labels_for("home");
    guard.sidecar(&s.name);
    engine::create_container(
        docker,
        &ContainerSpec {
            name: &s.name,
            image: &s.image.image,
            user: &s.image.user,
            env: vec![],
            cmd: sidecar::command(plan),
            tty: false,
            stdin: builtin_sidecar_kind(plan),
            labels: &s.labels,
            network: &net.internal,
            limits: SIDECAR_LIMITS,
            dns: vec![],
            volumes: vec![SIDECAR_CONFIG_DIR.into()],
            image_volumes: vec![],
            home: Some(HomeMount::Hold {
                size_mib: plan.limits.disk_mib,
                owner: numeric_user(&plan.container.user),
                labels: &home_labels,
            }),
            workspace: None,
        },
    )
    .await?;
    engine::connect_network(docker, &net.egress, &s.name, vec![]).await?;
    let (owner, mode) = config_owner(&s.image.user);
    let file = Path::new(&s.config_path)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("egress.yaml");
    engine::upload_file(
        docker,
        &s.name,
        SIDECAR_CONFIG_DIR,
        file,
        sidecar_config.as_bytes(),
        mode,
        owner,
    )
    .await?;
    Ok(engine::volume_at(docker, &s.name, engine::HOME_HOLD_PATH).await?)
}

/// `uid:gid` when both are numbers (a name only the image could resolve).
fn numeric_user(user: &str) -> Option<(u64, u64)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Set once the sidecar stopped mid-session: (its name, how it stopped).
pub type LostRx = tokio::sync::watch::Receiver<Option<(String, String)>>;

/// Watches the sidecar through the engine's wait API; set once it stopped.
struct SidecarWatch {
    rx: LostRx,
    task: tokio::task::JoinHandle<()>,
}

impl SidecarWatch {
    fn rx(&self) -> LostRx {
        self.rx.clone()
    }
}

impl Drop for SidecarWatch {
    fn drop(&mut self) {
        // The teardown stops the sidecar on purpose; that is no news.
        self.task.abort();
    }
}

fn watch_sidecar(docker: &Docker, name: &str) -> SidecarWatch {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let docker = docker.clone();
    let name = name.to_string();
    let task = tokio::spawn(async move {
        // An error here (the engine connection broke) proves nothing about
        // the sidecar: stay silent rather than end a healthy run.
        if let Ok(code) = session::wait_exit(&docker, &name).await {
            let how = format!("exit code {code}");
            // The terminal may be in raw mode (an interactive session):
            // carriage returns keep the line readable there.
            let cr = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                "\r"
            } else {
                ""
            };
            eprint!(
                "{cr}\nbottle: the egress sidecar {name} stopped ({how}); the agent has no way out, ending the run{cr}\n"
            );
            let _ = tx.send(Some((name, how)));
        }
    });
    SidecarWatch { rx, task }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| RunError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Read the sidecar's output line by line for the whole session: its
/// readiness line, the audit record, the blocked-host summary and the last
/// 20 lines (shown if it fails).
async fn watch_output(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    ready_tx: tokio::sync::watch::Sender<bool>,
    mut record: Option<audit::AuditLog>,
    blocked: Arc<Mutex<sidecar::BlockedLog>>,
    tail_w: Arc<Mutex<Vec<String>>>,
) {
    let mut pending = Vec::new();
    while let Some(Ok(chunk)) = output.next().await {
        let bytes = match chunk {
            LogOutput::StdOut { message }
            | LogOutput::StdErr { message }
            | LogOutput::Console { message } => message,
            LogOutput::StdIn { .. } => continue,
        };
        pending.extend_from_slice(&bytes);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if sidecar::is_ready_line(&line) {
                let _ = ready_tx.send(true);
            }
            if let Some(r) = record.as_mut() {
                r.record(&line);
            }
            if let Ok(mut b) = blocked.lock() {
                b.observe(&line);
            }
            if let Ok(mut t) = tail_w.lock() {
                t.push(line);
                let n = t.len();
                if n > 20 {
                    t.drain(..n - 20);
                }
            }
        }
    }
}

/// Attach to the sidecar, start it, hand it its secrets over stdin, and
/// wait until it accepts connections (it says so, or its port answers on
/// the egress network). Its output keeps being read for the decision log.
async fn start_sidecar(
    docker: &Docker,
    plan: &RunPlan,
    builtin: bool,
    message: Option<secrets::Secret>,
    blocked: Arc<Mutex<sidecar::BlockedLog>>,
    stop: &StopRx,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<(), RunError> {
    let name = &plan.sidecar.name;
    let attached = engine::attach(docker, name, builtin, true).await?;
    let output = attached.output;
    let mut input = attached.input;
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let tail: Arc<Mutex<Vec<String>>> = Arc::default();
    let tail_w = tail.clone();
    let record = audit::AuditLog::open(&plan.run_id);
    if record.is_none() {
        eprintln!(
            "warning: no audit record for this run (no writable state directory; set BOTTLE_STATE_DIR)"
        );
    }
    tokio::spawn(watch_output(output, ready_tx, record, blocked, tail_w));

    engine::start_container(docker, name).await?;
    let _ = started.send(());
    if builtin {
        // The secrets message, then EOF: the sidecar reads stdin to the end
        // before it serves. A failed write shows as a sidecar that never
        // gets ready (its error names the message, never a value).
        if let Some(m) = message {
            let _ = input.write_all(m.bytes()).await;
        }
        let _ = input.shutdown().await;
    }
    drop(input);

    let deadline = tokio::time::Instant::now() + SIDECAR_READY_TIMEOUT;
    // The ready line usually ends the wait; the engine is asked about the
    // sidecar (did it exit? does its port answer?) at growing intervals,
    // so a hundred bottles starting at once do not flood it with inspects.
    let mut interval = Duration::from_millis(50);
    loop {
        check(stop)?;
        if *ready_rx.borrow_and_update() {
            return Ok(());
        }
        let state = docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|source| EngineError::Api {
                what: format!("inspecting {name}"),
                source,
            })?;
        let running = state
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            let code = state.state.and_then(|s| s.exit_code).unwrap_or(-1);
            return Err(
                sidecar_failed(docker, name, &tail, format!("it exited with code {code}")).await,
            );
        }
        if let Some(ip) = state
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&plan.networks.egress).cloned())
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
        {
            let addr = format!("{ip}:{}", plan.sidecar.port);
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(sidecar_failed(
                docker,
                name,
                &tail,
                format!("not ready after {}s", SIDECAR_READY_TIMEOUT.as_secs()),
            )
            .await);
        }
        let _ = tokio::time::timeout(interval, ready_rx.changed()).await;
        interval = (interval * 2).min(Duration::from_millis(800));
    }
}

async fn sidecar_failed(
    docker: &Docker,
    name: &str,
    tail: &Arc<Mutex<Vec<String>>>,
    reason: String,
) -> RunError {
    let mut logs = tail.lock().map(|t| t.clone()).unwrap_or_default();
    if logs.is_empty() {
        let mut s = docker.logs(
            name,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "20".into(),
                ..Default::default()
            }),
        );
        while let Some(Ok(l)) = s.next().await {
            logs.extend(l.to_string().lines().map(str::to_string));
        }
    }
    RunError::Sidecar {
        name: name.to_string(),
        reason,
        logs,
    }
}
