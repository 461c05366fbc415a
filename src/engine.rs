//! The Docker engine, through bollard only: version checks, networks,
//! hardened containers, pulls by digest, uploads, attach, waits, and
//! label-scoped listing and removal.
//!
//! Invariants:
//! - Every container this module creates is hardened the same way (see
//!   [`hardened_host_config`]): non-root, no capabilities, no-new-privileges,
//!   read-only root, every writable place a tmpfs of `limits.disk` (`/tmp`,
//!   `/dev/shm`, image volumes, the agent's home), an init, pids/memory/CPU limits, no
//!   published ports, no host namespaces, the default seccomp profile, and
//!   no bind mount except an explicitly requested workspace.
//! - Removal is idempotent: "no such container/network" is success, so a
//!   teardown can run twice (guard + signal) without failing.
//! - Secret values only ever travel in a create body (`Config.Env`) or over
//!   an attached stdin; nothing here logs a request body.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigCgroupnsModeEnum, Ipam,
    IpamConfig, Mount, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    UploadToContainerOptions,
};
use futures_util::StreamExt;

use crate::netpool::Subnet;
use crate::policy::Limits;

/// First engine release whose internal networks do not forward DNS for
/// external names through the host (CVE-2024-29018).
pub const MIN_PATCHED: (u32, u32, u32) = (25, 0, 5);
/// First engine release with `gateway_mode_ipv4=isolated`.
pub const MIN_ISOLATED_GATEWAY: (u32, u32, u32) = (28, 0, 0);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the Docker engine ({0}); start Docker or set DOCKER_HOST to a running engine"
    )]
    Connect(#[source] BollardError),
    #[error(
        "Docker engine {version} is older than 25.0.5: its internal networks forward DNS for external names through the host (CVE-2024-29018), so a bottle could leak data over DNS. Upgrade the engine, or pass --allow-unpatched-engine (env BOTTLE_ALLOW_UNPATCHED_ENGINE=1) to run with bottle's DNS mitigation"
    )]
    Unpatched { version: String },
    #[error("Docker engine reports an unparsable version `{0}`")]
    Version(String),
    #[error("engine: {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The engine refused a network's subnet because another network
    /// already overlaps it (a concurrent run took it): try another.
    #[error("engine: creating network {name}: subnet {subnet} overlaps another network")]
    SubnetTaken {
        name: String,
        subnet: crate::netpool::Subnet,
    },
    #[error("pulling {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("loading {tag} into the engine: {message}")]
    Load { tag: String, message: String },
    #[error(
        "the engine's image for {reference} does not carry digest {digest} (it lists {found:?}); refusing to run it"
    )]
    DigestMismatch {
        reference: String,
        digest: String,
        found: Vec<String>,
    },
}

impl crate::error::Classify for EngineError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        use crate::error::ExitKind;
        match self {
            EngineError::DigestMismatch { .. } => ExitKind::Failure,
            EngineError::Api { .. } | EngineError::SubnetTaken { .. } => ExitKind::Failure,
            _ => ExitKind::Environment,
        }
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let what = what.into();
    move |source| EngineError::Api { what, source }
}

/// A 404 from the engine: the object is already gone.
pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Connect with the local defaults (`DOCKER_HOST` or the unix socket) and
/// negotiate the API version down to what the engine speaks.
pub async fn connect() -> Result<Docker, EngineError> {
    let docker = Docker::connect_with_local_defaults().map_err(EngineError::Connect)?;
    docker
        .negotiate_version()
        .await
        .map_err(EngineError::Connect)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    pub raw: String,
    pub parsed: (u32, u32, u32),
}

impl EngineVersion {
    /// `20.10.24+dfsg1` → (20, 10, 24).
    pub fn parse(raw: &str) -> Option<EngineVersion> {
        let core = raw.trim_start_matches('v').split(['+', '-', '~']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let parsed = (
            it.next()??,
            it.next().flatten().unwrap_or(0),
            it.next().flatten().unwrap_or(0),
        );
        Some(EngineVersion {
            raw: raw.to_string(),
            parsed,
        })
    }

    pub fn patched(&self) -> bool {
        self.parsed >= MIN_PATCHED
    }

    pub fn supports_isolated_gateway(&self) -> bool {
        self.parsed >= MIN_ISOLATED_GATEWAY
    }
}

pub async fn version(docker: &Docker) -> Result<EngineVersion, EngineError> {
    let v = docker.version().await.map_err(EngineError::Connect)?;
    let raw = v.version.unwrap_or_default();
    EngineVersion::parse(&raw).ok_or(EngineError::Version(raw))
}

/// Refuse an engine with CVE-2024-29018 unless the caller opted in (then
/// the caller must apply the DNS mitigation).
pub fn check_version(v: &EngineVersion, allow_unpatched: bool) -> Result<(), EngineError> {
    if v.patched() || allow_unpatched {
        Ok(())
    } else {
        Err(EngineError::Unpatched {
            version: v.raw.clone(),
        })
    }
}

/// The isolation the engine adds on top of what `bottle` asks for, as its
/// `SecurityOptions` report it (`name=seccomp,profile=default`,
/// `name=apparmor`, `name=selinux`, `name=userns`, `name=rootless`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineSecurity {
    /// `userns-remap`: uids in containers map to a subordinate range.
    pub userns_remap: bool,
    /// The engine itself runs unprivileged in its own user namespace.
    pub rootless: bool,
    /// The seccomp profile the engine applies by default, if any.
    pub seccomp: Option<String>,
    pub apparmor: bool,
    pub selinux: bool,
}

impl EngineSecurity {
    pub fn parse(options: &[String]) -> EngineSecurity {
        let mut s = EngineSecurity::default();
        for o in options {
            let kv: HashMap<&str, &str> = o.split(',').filter_map(|p| p.split_once('=')).collect();
            match kv.get("name").copied() {
                Some("userns") => s.userns_remap = true,
                Some("rootless") => s.rootless = true,
                Some("apparmor") => s.apparmor = true,
                Some("selinux") => s.selinux = true,
                Some("seccomp") => {
                    s.seccomp = Some(kv.get("profile").copied().unwrap_or("default").to_string())
                }
                _ => {}
            }
        }
        s
    }

    /// The preflight's description, stated as the engine reports it.
    pub fn summary(&self) -> String {
        let users = match (self.rootless, self.userns_remap) {
            (true, _) => "rootless engine (root inside maps to the engine's unprivileged user)",
            (false, true) => "user namespace remapped (userns-remap)",
            (false, false) => {
                "user namespace shared with the host (uid 1000 inside is uid 1000 on the host)"
            }
        };
        let seccomp = match &self.seccomp {
            Some(p) => format!("seccomp {p}"),
            None => "no seccomp".into(),
        };
        let lsm = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                format!("no {name}")
            }
        };
        format!(
            "{users}, {seccomp}, {}, {}",
            lsm(self.apparmor, "AppArmor"),
            lsm(self.selinux, "SELinux")
        )
    }
}

/// What the engine reports about its isolation (`GET /info`).
pub async fn security(docker: &Docker) -> Result<EngineSecurity, EngineError> {
    Ok(info(docker).await?.security)
}

/// What the runner reads from the engine's `/info`, in one call.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub security: EngineSecurity,
    /// The engine host's memory in bytes.
    pub memory_total: Option<u64>,
}

pub async fn info(docker: &Docker) -> Result<EngineInfo, EngineError> {
    let info = docker
        .info()
        .await
        .map_err(api("reading the engine's info"))?;
    Ok(EngineInfo {
        security: EngineSecurity::parse(&info.security_options.unwrap_or_default()),
        memory_total: info.mem_total.and_then(|m| u64::try_from(m).ok()),
    })
}

/// Whether the engine runs on this host (a unix socket, the default), so
/// this host's routes, memory and tasks are the engine's.
pub fn is_local() -> bool {
    match std::env::var("DOCKER_HOST") {
        Err(_) => true,
        Ok(h) => h.is_empty() || h.starts_with("unix://"),
    }
}

/// How many bottles exist now (agent containers in any state: a starting
/// bottle counts as much as a running one).
pub async fn count_bottles(docker: &Docker) -> Result<usize, EngineError> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{}=agent", crate::plan::LABEL_ROLE)],
    );
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(api("listing containers"))?;
    Ok(list.len())
}

fn labels_map(labels: &[(String, String)]) -> HashMap<String, String> {
    labels.iter().cloned().collect()
}

/// Create the bottle's `--internal` network with the host cut off: on
/// engines that have it, the gateway is isolated; on older ones the bridge
/// gets no IPv4 address at all (`inhibit_ipv4`), so the gateway address the
/// containers see belongs to nobody. IPv6 is off either way.
pub async fn create_internal_network(
    docker: &Docker,
    name: &str,
    labels: &[(String, String)],
    v: &EngineVersion,
    subnet: Option<Subnet>,
) -> Result<(), EngineError> {
    let mut options = HashMap::new();
    if v.supports_isolated_gateway() {
        options.insert(
            "com.docker.network.bridge.gateway_mode_ipv4".to_string(),
            "isolated".to_string(),
        );
    } else {
        options.insert(
            "com.docker.network.bridge.inhibit_ipv4".to_string(),
            "true".to_string(),
        );
    }
    // No inter-container masquerading needed; the network never leaves the host.
    options.insert(
        "com.docker.network.bridge.enable_ip_masquerade".to_string(),
        "false".to_string(),
    );
    create_network(
        docker,
        NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            options: Some(options),
            labels: Some(labels_map(labels)),
            ipam: ipam(subnet),
            ..Default::default()
        },
        subnet,
    )
    .await
}

/// A plain bridge network for the sidecar's way out.
pub async fn create_bridge_network(
    docker: &Docker,
    name: &str,
    labels: &[(String, String)],
    subnet: Option<Subnet>,
) -> Result<(), EngineError> {
    create_network(
        docker,
        NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(false),
            labels: Some(labels_map(labels)),
            ipam: ipam(subnet),
            ..Default::default()
        },
        subnet,
    )
    .await
}

/// `None`: the engine picks from its default pools.
fn ipam(subnet: Option<Subnet>) -> Option<Ipam> {
    subnet.map(|s| Ipam {
        driver: Some("default".into()),
        config: Some(vec![IpamConfig {
            subnet: Some(s.to_string()),
            ..Default::default()
        }]),
        options: None,
    })
}

async fn create_network(
    docker: &Docker,
    request: NetworkCreateRequest,
    subnet: Option<Subnet>,
) -> Result<(), EngineError> {
    let name = request.name.clone();
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Every engine since 1.x words it "Pool overlaps with other one on
        // this address space" (newer ones prefix "invalid pool request:").
        Err(e) if subnet.is_some() && is_pool_overlap(&e) => Err(EngineError::SubnetTaken {
            name,
            subnet: subnet.expect("checked"),
        }),
        Err(e) => Err(api(format!("creating network {name}"))(e)),
    }
}

fn is_pool_overlap(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            message.to_ascii_lowercase().contains("overlaps")
        }
        _ => false,
    }
}

/// The IPv4 subnets of every network the engine has (any owner): run
/// networks must not overlap them.
pub async fn network_subnets(docker: &Docker) -> Result<Vec<Subnet>, EngineError> {
    let networks = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .map_err(api("listing networks"))?;
    Ok(networks
        .into_iter()
        .filter_map(|n| n.ipam.and_then(|i| i.config))
        .flatten()
        .filter_map(|c| c.subnet.and_then(|s| s.parse::<Subnet>().ok()))
        .collect())
}

pub async fn remove_network(docker: &Docker, name: &str) -> Result<(), EngineError> {
    match docker.remove_network(name).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(api(format!("removing network {name}"))(e)),
    }
}

/// Kill and remove a container with its anonymous volumes (the sidecar's
/// config volume and the agent's home volume it holds die with it).
pub async fn remove_container(docker: &Docker, name: &str) -> Result<(), EngineError> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(name, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // "removal already in progress" is a success for a teardown.
        Err(BollardError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(api(format!("removing container {name}"))(e)),
    }
}

/// Progress of a pull, for a progress bar.
#[derive(Debug, Clone, Default)]
pub struct PullProgress {
    pub current: u64,
    pub total: u64,
    pub status: String,
}

/// Pull `reference` (`repo@sha256:…`) unless the engine already has it.
pub async fn pull(
    docker: &Docker,
    reference: &str,
    mut progress: impl FnMut(&PullProgress),
) -> Result<(), EngineError> {
    if docker.inspect_image(reference).await.is_ok() {
        return Ok(());
    }
    let opts = CreateImageOptions {
        from_image: Some(reference.to_string()),
        ..Default::default()
    };
    let mut per_layer: HashMap<String, (u64, u64)> = HashMap::new();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| EngineError::Pull {
            reference: reference.to_string(),
            message: e.to_string(),
        })?;
        if let (Some(id), Some(d)) = (&info.id, &info.progress_detail) {
            let entry = per_layer.entry(id.clone()).or_default();
            if let Some(c) = d.current {
                entry.0 = c.max(0) as u64;
            }
            if let Some(t) = d.total {
                entry.1 = t.max(0) as u64;
            }
        }
        let (current, total) = per_layer
            .values()
            .fold((0, 0), |(c, t), (a, b)| (c + a, t + b));
        progress(&PullProgress {
            current,
            total,
            status: info.status.unwrap_or_default(),
        });
    }
    Ok(())
}

/// The engine's image ID for `reference` (an ID or a name), `None` when the
/// engine does not have it.
pub async fn image_id(docker: &Docker, reference: &str) -> Result<Option<String>, EngineError> {
    match docker.inspect_image(reference).await {
        Ok(i) => Ok(i.id),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(api(format!("inspecting image {reference}"))(e)),
    }
}

/// A `Write` that hands each chunk to an async receiver: the archive writer
/// runs on a blocking thread and the engine reads as it is produced, so
/// the whole image is never held in memory or written to a temp file.
struct ChunkSender(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>);

impl std::io::Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "engine stopped reading")
            })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Load `image` from the blob store into the engine (`POST /images/load`,
/// the archive streamed as it is written) under `tag`, then check that the
/// engine's image ID is the config digest.
pub async fn load_image(
    docker: &Docker,
    image: &crate::oci::BuiltImage,
    store: &crate::oci::BlobStore,
    tag: &str,
    progress: &crate::progress::Progress,
) -> Result<(), EngineError> {
    let fail = |message: String| EngineError::Load {
        tag: tag.to_string(),
        message,
    };
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let bar = progress.bytes(total, "loading into the engine");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let (image_c, store_c, tags) = (image.clone(), store.clone(), vec![tag.to_string()]);
    let err_tx = tx.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(256 * 1024, ChunkSender(tx));
        if let Err(e) =
            crate::oci::archive::write_archive(&image_c, &store_c, &tags, out).and_then(|w| {
                w.into_inner().map(drop).map_err(|e| {
                    crate::oci::OciError::io("cannot stream", "the archive", e.into_error())
                })
            })
        {
            let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let shown = bar.clone();
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let body = chunks.inspect(move |c| {
        if let Ok(b) = c {
            shown.inc(b.len() as u64);
        }
    });
    let opts = bollard::query_parameters::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut s = docker.import_image(opts, bollard::body_try_stream(body), None);
    while let Some(item) = s.next().await {
        let info = item.map_err(|e| fail(e.to_string()))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(fail(err));
        }
    }
    writer
        .await
        .map_err(|e| fail(format!("the archive writer failed: {e}")))?;
    bar.finish("loaded");
    match image_id(docker, tag).await? {
        Some(id) if id == image.config_digest => Ok(()),
        other => Err(fail(format!(
            "the engine reports image ID {other:?}, expected the config digest {}",
            image.config_digest
        ))),
    }
}

/// What the runner needs from an image: its labels, user, home, size.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub user: String,
    pub env: Vec<String>,
    pub size: Option<u64>,
    pub repo_digests: Vec<String>,
    /// Paths the image config declares as volumes, sorted.
    pub volumes: Vec<String>,
}

pub async fn inspect_image(docker: &Docker, reference: &str) -> Result<ImageInfo, EngineError> {
    let i = docker
        .inspect_image(reference)
        .await
        .map_err(api(format!("inspecting image {reference}")))?;
    let config = i.config.unwrap_or_default();
    Ok(ImageInfo {
        id: i.id.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        user: config.user.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        size: i.size.map(|s| s.max(0) as u64),
        repo_digests: i.repo_digests.unwrap_or_default(),
        volumes: {
            let mut v: Vec<String> = config.volumes.unwrap_or_default();
            v.sort();
            v
        },
    })
}

/// The engine must list `repository@digest` for the image it will run.
pub fn verify_digest(info: &ImageInfo, repository: &str, digest: &str) -> Result<(), EngineError> {
    let want = format!("{repository}@{digest}");
    if info.repo_digests.iter().any(|d| d == &want) {
        Ok(())
    } else {
        Err(EngineError::DigestMismatch {
            reference: repository.to_string(),
            digest: digest.to_string(),
            found: info.repo_digests.clone(),
        })
    }
}

/// One container to create. The caller has already resolved env values.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub user: &'a str,
    /// `NAME=value` pairs; may hold secrets, sent only in the create body.
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub tty: bool,
    /// Keep stdin open (interactive agent, or the sidecar's secret channel).
    pub stdin: bool,
    pub labels: &'a [(String, String)],
    pub network: &'a str,
    pub limits: Limits,
    pub dns: Vec<String>,
    /// Anonymous volumes on the engine's disk that only `bottle` writes
    /// (the sidecar's uploaded config); they die with the container.
    pub volumes: Vec<String>,
    /// Paths the image declares as volumes: each gets a tmpfs of
    /// `limits.disk_mib` instead of an unbounded volume on the host's disk.
    pub image_volumes: Vec<String>,
    pub home: Option<HomeMount<'a>>,
    pub workspace: Option<&'a std::path::Path>,
}

/// Where the sidecar holds the agent's home volume mounted: inside a tmpfs
/// that only root may enter, and the sidecar never runs as root.
pub const HOME_HOLD_DIR: &str = "/run/bottle";
pub const HOME_HOLD_PATH: &str = "/run/bottle/agent-home";

/// The agent's home: a memory-backed (tmpfs) volume of a fixed size.
///
/// The engine fills a volume with the image's content only when the
/// container that uses it is created, and a tmpfs volume loses what it holds
/// whenever nobody has it mounted. So the sidecar, which runs for the whole
/// session, creates the volume and holds it mounted (hidden); the agent is
/// created after the sidecar started, and its home is filled with the
/// image's home into the live tmpfs. Removing the sidecar with its
/// anonymous volumes (after the agent) removes it.
pub enum HomeMount<'a> {
    /// Create the volume and hold it at [`HOME_HOLD_PATH`] (the sidecar).
    Hold {
        size_mib: u64,
        /// Owner of the volume's root when the image has no home folder.
        owner: Option<(u64, u64)>,
        labels: &'a [(String, String)],
    },
    /// Mount the held volume `volume` at `target` (the agent).
    Use { volume: String, target: String },
}

/// The tmpfs `o=` options of the home volume.
fn home_tmpfs_options(size_mib: u64, owner: Option<(u64, u64)>) -> String {
    let mut o = format!("size={size_mib}m,mode=0700,nosuid,nodev");
    if let Some((uid, gid)) = owner {
        o.push_str(&format!(",uid={uid},gid={gid}"));
    }
    o
}

fn home_mounts(home: &HomeMount<'_>, tmpfs: &mut HashMap<String, String>) -> Mount {
    match home {
        HomeMount::Hold {
            size_mib,
            owner,
            labels,
        } => {
            tmpfs.insert(
                HOME_HOLD_DIR.to_string(),
                "rw,nosuid,nodev,noexec,size=64k,mode=0700,uid=0,gid=0".to_string(),
            );
            let mut options = HashMap::new();
            options.insert("type".to_string(), "tmpfs".to_string());
            options.insert("device".to_string(), "tmpfs".to_string());
            options.insert("o".to_string(), home_tmpfs_options(*size_mib, *owner));
            Mount {
                target: Some(HOME_HOLD_PATH.into()),
                typ: Some(MountType::VOLUME),
                volume_options: Some(MountVolumeOptions {
                    no_copy: Some(true),
                    labels: Some(labels_map(labels)),
                    driver_config: Some(MountVolumeOptionsDriverConfig {
                        name: Some("local".into()),
                        options: Some(options),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        HomeMount::Use { volume, target } => Mount {
            target: Some(target.clone()),
            source: Some(volume.clone()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            ..Default::default()
        },
    }
}

/// The name of the volume mounted at `path` in `container`.
pub async fn volume_at(
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<String, EngineError> {
    let i = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(api(format!("inspecting {container}")))?;
    i.mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some(path))
        .and_then(|m| m.name)
        .ok_or_else(|| EngineError::Api {
            what: format!("finding the volume at {path} in {container}"),
            source: BollardError::DockerResponseServerError {
                status_code: 404,
                message: "no volume mounted there".into(),
            },
        })
}

/// Remove every volume labeled `dev.bottle.run=<run_id>` (a home volume
/// outlives its sidecar when someone removed the sidecar by hand).
pub async fn remove_run_volumes(docker: &Docker, run_id: &str) -> Result<(), EngineError> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{}={run_id}", crate::plan::LABEL_RUN)],
    );
    let list = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(api("listing volumes"))?;
    for v in list.volumes.unwrap_or_default() {
        match docker
            .remove_volume(&v.name, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api(format!("removing volume {}", v.name))(e)),
        }
    }
    Ok(())
}

/// The hardening every bottle container gets.
pub fn hardened_host_config(spec: &ContainerSpec<'_>) -> HostConfig {
    let memory = (spec.limits.memory_mib * 1024 * 1024) as i64;
    // Every writable place is a tmpfs of `disk_mib`: bounded by the engine
    // and off the host's disk (its pages count against `memory`).
    let sized = format!("rw,nosuid,nodev,size={}m", spec.limits.disk_mib);
    let mut tmpfs = HashMap::new();
    tmpfs.insert("/tmp".to_string(), sized.clone());
    for v in &spec.image_volumes {
        tmpfs.insert(v.clone(), sized.clone());
    }
    let mut mounts = Vec::new();
    if let Some(home) = &spec.home {
        mounts.push(home_mounts(home, &mut tmpfs));
    }
    if let Some(w) = spec.workspace {
        mounts.push(Mount {
            target: Some("/workspace".into()),
            source: Some(w.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    let mounts = (!mounts.is_empty()).then_some(mounts);
    HostConfig {
        network_mode: Some(spec.network.to_string()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        init: Some(true),
        pids_limit: Some(spec.limits.pids as i64),
        memory: Some(memory),
        // /dev/shm is writable too: no larger than the engine's usual 64 MiB
        // nor than the disk limit.
        shm_size: Some((spec.limits.disk_mib.min(64) * 1024 * 1024) as i64),
        // Equal to memory: no swap on top of the limit.
        memory_swap: Some(memory),
        nano_cpus: Some((spec.limits.cpu_millis * 1_000_000) as i64),
        privileged: Some(false),
        publish_all_ports: Some(false),
        ipc_mode: Some("private".into()),
        // The engine's default on cgroup v1 hosts is the host's cgroup
        // namespace; a bottle gets its own.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        dns: if spec.dns.is_empty() {
            None
        } else {
            Some(spec.dns.clone())
        },
        mounts,
        auto_remove: Some(false),
        ..Default::default()
    }
}

pub async fn create_container(
    docker: &Docker,
    spec: &ContainerSpec<'_>,
) -> Result<String, EngineError> {
    let mut endpoints = HashMap::new();
    endpoints.insert(spec.network.to_string(), EndpointSettings::default());
    let body = ContainerCreateBody {
        image: Some(spec.image.to_string()),
        user: Some(spec.user.to_string()),
        env: Some(spec.env.clone()),
        cmd: if spec.cmd.is_empty() {
            None
        } else {
            Some(spec.cmd.clone())
        },
        tty: Some(spec.tty),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(labels_map(spec.labels)),
        volumes: if spec.volumes.is_empty() {
            None
        } else {
            Some(spec.volumes.clone())
        },
        working_dir: spec.workspace.map(|_| "/workspace".to_string()),
        host_config: Some(hardened_host_config(spec)),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(spec.name.to_string()),
        platform: String::new(),
    };
    let r = docker
        .create_container(Some(opts), body)
        .await
        .map_err(api(format!("creating container {}", spec.name)))?;
    Ok(r.id)
}

pub async fn connect_network(
    docker: &Docker,
    network: &str,
    container: &str,
    aliases: Vec<String>,
) -> Result<(), EngineError> {
    docker
        .connect_network(
            network,
            NetworkConnectRequest {
                container: container.to_string(),
                endpoint_config: Some(EndpointSettings {
                    aliases: if aliases.is_empty() {
                        None
                    } else {
                        Some(aliases)
                    },
                    ..Default::default()
                }),
            },
        )
        .await
        .map_err(api(format!("connecting {container} to network {network}")))
}

/// Upload one file (given mode and owner) into `dir` of a created container.
pub async fn upload_file(
    docker: &Docker,
    container: &str,
    dir: &str,
    file_name: &str,
    contents: &[u8],
    mode: u32,
    (uid, gid): (u64, u64),
) -> Result<(), EngineError> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    let bytes = (|| -> std::io::Result<Vec<u8>> {
        archive.append_data(&mut header, file_name, contents)?;
        archive.into_inner()
    })()
    .map_err(|e| EngineError::Api {
        what: format!("packing {file_name} for {container}"),
        source: BollardError::IOError { err: e },
    })?;
    let opts = UploadToContainerOptions {
        path: dir.to_string(),
        no_overwrite_dir_non_dir: None,
        copy_uidgid: None,
    };
    docker
        .upload_to_container(container, Some(opts), bollard::body_full(bytes.into()))
        .await
        .map_err(api(format!("uploading {dir}/{file_name} into {container}")))
}

pub async fn start_container(docker: &Docker, name: &str) -> Result<(), EngineError> {
    docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(api(format!("starting container {name}")))
}

/// Attach to a container's output streams (and its stdin when `stdin`),
/// before it starts so nothing it prints is lost. `logs` also replays what
/// it printed already.
pub async fn attach(
    docker: &Docker,
    name: &str,
    stdin: bool,
    logs: bool,
) -> Result<bollard::container::AttachContainerResults, EngineError> {
    docker
        .attach_container(
            name,
            Some(bollard::query_parameters::AttachContainerOptions {
                stdin,
                stdout: true,
                stderr: true,
                stream: true,
                logs,
                detach_keys: None,
            }),
        )
        .await
        .map_err(api(format!("attaching to {name}")))
}

/// A labeled object found by [`list_labeled`].
#[derive(Debug, Clone)]
pub struct Labeled {
    pub kind: ObjectKind,
    pub name: String,
    pub state: String,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Container,
    Network,
}

/// Every container (running or not) and network carrying `label`.
pub async fn list_labeled(docker: &Docker, label: &str) -> Result<Vec<Labeled>, EngineError> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![label.to_string()]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(api("listing containers"))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(api("listing networks"))?;
    let mut out = Vec::new();
    for c in containers {
        let name = c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| c.id.clone().unwrap_or_default());
        out.push(Labeled {
            kind: ObjectKind::Container,
            name,
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
        });
    }
    for n in networks {
        out.push(Labeled {
            kind: ObjectKind::Network,
            name: n.name.unwrap_or_default(),
            state: String::new(),
            labels: n.labels.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The contents of the regular file at `path` in a container (created or
/// running), at most `max` bytes; `None` when it is absent, not a regular
/// file, or larger.
pub async fn download_file(
    docker: &Docker,
    container: &str,
    path: &str,
    max: u64,
) -> Option<Vec<u8>> {
    let opts = bollard::query_parameters::DownloadFromContainerOptions {
        path: path.to_string(),
    };
    let mut stream = docker.download_from_container(container, Some(opts));
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        tar_bytes.extend_from_slice(&chunk.ok()?);
        if tar_bytes.len() as u64 > max + 64 * 1024 {
            return None;
        }
    }
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > max {
        return None;
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = EngineVersion::parse("20.10.24+dfsg1").unwrap();
        assert_eq!(v.parsed, (20, 10, 24));
        assert!(!v.patched());
        assert!(check_version(&v, false).is_err());
        assert!(check_version(&v, true).is_ok());
        let msg = check_version(&v, false).unwrap_err().to_string();
        assert!(
            msg.contains("20.10.24+dfsg1") && msg.contains("CVE-2024-29018"),
            "{msg}"
        );
        assert!(EngineVersion::parse("25.0.5").unwrap().patched());
        assert!(!EngineVersion::parse("25.0.4").unwrap().patched());
        assert!(EngineVersion::parse("26.1").unwrap().patched());
        assert!(
            !EngineVersion::parse("27.5.1")
                .unwrap()
                .supports_isolated_gateway()
        );
        assert!(
            EngineVersion::parse("28.2.2")
                .unwrap()
                .supports_isolated_gateway()
        );
        assert!(EngineVersion::parse("dev").is_none());
    }

    #[test]
    fn security_options_are_read_as_the_engine_states_them() {
        let plain = EngineSecurity::parse(&["name=seccomp,profile=default".into()]);
        assert_eq!(
            plain.summary(),
            "user namespace shared with the host (uid 1000 inside is uid 1000 on the host), seccomp default, no AppArmor, no SELinux"
        );
        let remapped = EngineSecurity::parse(&[
            "name=apparmor".into(),
            "name=seccomp,profile=builtin".into(),
            "name=userns".into(),
            "name=selinux".into(),
        ]);
        assert!(remapped.userns_remap && remapped.apparmor && remapped.selinux);
        assert_eq!(
            remapped.summary(),
            "user namespace remapped (userns-remap), seccomp builtin, AppArmor, SELinux"
        );
        let rootless = EngineSecurity::parse(&["name=rootless".into(), "name=cgroupns".into()]);
        assert!(rootless.summary().starts_with("rootless engine"));
        assert!(rootless.summary().contains("no seccomp"));
    }

    #[test]
    fn the_engine_image_must_carry_the_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let info = ImageInfo {
            repo_digests: vec![format!("localhost:5000/bottle/hello@{d}")],
            ..Default::default()
        };
        assert!(verify_digest(&info, "localhost:5000/bottle/hello", &d).is_ok());
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(
            verify_digest(&info, "localhost:5000/bottle/hello", &other),
            Err(EngineError::DigestMismatch { .. })
        ));
        assert!(verify_digest(&info, "localhost:5000/bottle/other", &d).is_err());
    }

    #[test]
    fn hardening_is_complete() {
        let labels = vec![];
        let spec = ContainerSpec {
            name: "x",
            image: "i",
            user: "1000:1000",
            env: vec![],
            cmd: vec![],
            tty: false,
            stdin: false,
            labels: &labels,
            network: "n",
            limits: Limits::default(),
            dns: vec![],
            volumes: vec![],
            image_volumes: vec!["/data".into()],
            home: None,
            workspace: None,
        };
        let h = hardened_host_config(&spec);
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.pids_limit, Some(512));
        assert_eq!(h.memory, Some(4096 * 1024 * 1024));
        assert_eq!(h.nano_cpus, Some(2_000_000_000));
        assert!(h.binds.is_none() && h.mounts.is_none() && h.port_bindings.is_none());
        let tmpfs = h.tmpfs.unwrap();
        let sized = format!("rw,nosuid,nodev,size={}m", Limits::default().disk_mib);
        assert_eq!(tmpfs.get("/tmp"), Some(&sized), "/tmp is bounded by disk");
        assert_eq!(
            tmpfs.get("/data"),
            Some(&sized),
            "image volumes become tmpfs"
        );
        assert!(h.pid_mode.is_none() && h.userns_mode.is_none() && h.uts_mode.is_none());
    }
}
