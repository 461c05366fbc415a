//! Shared fixture for the runner's integration tests: a real registry (from
//! `common`), a tiny agent image built by bottle's own `oci` code from
//! `/bin/busybox` (non-root user, a home, the policy label), pushed by
//! digest, a project root with its lockfile, and helpers to run the `bottle`
//! binary and to count what is left on the engine.
//!
//! Everything the tests create on the engine carries `dev.bottle.test=1` or
//! the runner's own `dev.bottle.run` label, and guards remove it on drop.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions,
};
use bottle::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};
use bottle::oci::{BlobStore, build};
use bottle::policy::{Egress, Limits, POLICY_LABEL, Policy, Sidecar, SidecarKind};
use bottle::progress::Progress;
use bottle::registry::RegistryClient;

use crate::common;

pub(crate) const RUN_LABEL: &str = "dev.bottle.run";

pub(crate) struct Fixture {
    pub reg: common::Registry,
    pub root: tempfile::TempDir,
    _cache: tempfile::TempDir,
    pub agent: String,
    pub digest: String,
    pub docker: Docker,
}

/// Build and push the test agent; `None` when the environment is missing
/// (after a notice; a failure under CI=true).
pub(crate) async fn fixture(agent: &str, allow: &[&str]) -> Option<Fixture> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !common::require_busybox() {
        return None;
    }
    let docker = common::require_docker().await?;
    let reg = common::Registry::start()?;
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let mut allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    allow.sort();
    let policy = Policy {
        schema: 1,
        agent: agent.to_string(),
        egress: Egress { allow, ssh: vec![] },
        env: vec!["BOTTLE_TEST_SECRET".into()],
        sidecar: Sidecar {
            kind: SidecarKind::Builtin,
            image: None,
        },
        secrets: vec![],
        limits: Limits {
            memory_mib: 256,
            cpu_millis: 1000,
            pids: 128,
            // Well below memory, so writing past it fails with "no space"
            // before the memory limit (which tmpfs pages count against).
            disk_mib: 64,
        },
    };
    let image = build(&agent_spec(&policy), &store).unwrap();
    let repo = format!("bottle/{agent}");
    RegistryClient::new(&reg.host())
        .unwrap()
        .push(&repo, None, &image, &store, &Progress::hidden())
        .await
        .unwrap_or_else(|e| panic!("push: {e:?}\n{}", reg.log()));
    let root = project_with_lockfile(&policy, &repo, &image.manifest_digest);
    Some(Fixture {
        reg,
        root,
        _cache: cache,
        agent: agent.to_string(),
        digest: image.manifest_digest.clone(),
        docker,
    })
}

/// busybox with the applets the tests use, a non-root user with a home,
/// and the policy label.
pub(crate) fn agent_spec(policy: &Policy) -> ImageSpec {
    let e = |path: &str, mode, uid, kind| Entry {
        path: path.into(),
        mode,
        uid,
        gid: uid,
        kind,
    };
    let mut entries = vec![
        e(
            "bin/busybox",
            0o755,
            0,
            EntryKind::File(FileSource::Path(PathBuf::from(common::BUSYBOX))),
        ),
        e("home", 0o755, 0, EntryKind::Dir),
        e("home/agent", 0o755, 1000, EntryKind::Dir),
        e(
            "home/agent/.from-image",
            0o644,
            1000,
            EntryKind::File(FileSource::Bytes(b"home-from-image\n".to_vec())),
        ),
        e("tmp", 0o1777, 0, EntryKind::Dir),
        e("www", 0o755, 0, EntryKind::Dir),
        e(
            "www/hello.txt",
            0o644,
            0,
            EntryKind::File(FileSource::Bytes(b"hello-from-upstream\n".to_vec())),
        ),
    ];
    for applet in [
        "sh",
        "echo",
        "cat",
        "ls",
        "id",
        "env",
        "nc",
        "sleep",
        "ip",
        "nslookup",
        "grep",
        "awk",
        "head",
        "printf",
        "true",
        "false",
        "touch",
        "httpd",
        "timeout",
        "tr",
        "mount",
        "sed",
        "sha256sum",
        "dd",
        "df",
        "stat",
    ] {
        entries.push(e(
            &format!("bin/{applet}"),
            0o777,
            0,
            EntryKind::Symlink("busybox".into()),
        ));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut labels = BTreeMap::new();
    labels.insert(POLICY_LABEL.to_string(), policy.to_canonical_json());
    ImageSpec {
        base: Base::Scratch,
        layers: vec![LayerSpec {
            name: "busybox".into(),
            entries,
        }],
        config: ConfigSpec {
            user: "1000:1000".into(),
            env: vec!["PATH=/bin".into(), "HOME=/home/agent".into()],
            cmd: vec!["sh".into()],
            working_dir: "/home/agent".into(),
            labels,
            ..ConfigSpec::default()
        },
        mtime: 0,
    }
}

impl Fixture {
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BOTTLE_REGISTRY".into(), self.reg.localhost()),
            ("BOTTLE_ROOT".into(), self.root.path().display().to_string()),
            ("BOTTLE_ALLOW_UNPATCHED_ENGINE".into(), "1".into()),
            // Audit records stay in the test's project, not the user's home.
            (
                "BOTTLE_STATE_DIR".into(),
                self.root.path().join(".state").display().to_string(),
            ),
        ]
    }

    /// Run `bottle` to completion with the fixture's env plus `extra`.
    pub(crate) fn bottle(&self, args: &[&str], extra: &[(&str, &str)]) -> common::Output {
        let env = self.env();
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        common::run_bottle(args, self.root.path(), &all)
    }

    /// Start `bottle` in the background (stdout/stderr captured to files).
    pub(crate) fn spawn(&self, args: &[&str], extra: &[(&str, &str)]) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let err = std::fs::File::create(dir.path().join("err")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
        cmd.args(args)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Spawned {
            child: Some(cmd.spawn().unwrap()),
            dir,
        }
    }
}

pub(crate) struct Spawned {
    pub child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Spawned {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
    pub(crate) fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                return Some(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }
    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Names of containers, networks and volumes carrying the runner's label whose agent
/// label is `agent` (each test uses its own agent name, so parallel tests do
/// not see each other).
pub(crate) async fn leftovers(docker: &Docker, agent: &str) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("dev.bottle.agent={agent}"), RUN_LABEL.to_string()],
    );
    let mut out = Vec::new();
    for c in docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .unwrap()
    {
        out.push(format!("container {:?}", c.names.unwrap_or_default()));
    }
    for n in docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .unwrap()
    {
        out.push(format!("network {}", n.name.unwrap_or_default()));
    }
    for v in docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
    {
        let run = v.labels.get(RUN_LABEL).cloned().unwrap_or_default();
        out.push(format!("volume {} of {run}", v.name));
    }
    out
}

/// Wait until `pred` holds for the labeled objects of `agent` (or time out).
pub(crate) async fn wait_for(
    docker: &Docker,
    agent: &str,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leftovers(docker, agent).await;
        if pred(&l) || Instant::now() >= deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes every container, network and volume labeled for `agent` on drop (a failing test must
/// not leave anything behind).
pub(crate) struct Cleanup {
    pub agent: String,
    pub extra_containers: Vec<String>,
    pub extra_networks: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let agent = self.agent.clone();
        let containers = std::mem::take(&mut self.extra_containers);
        let networks = std::mem::take(&mut self.extra_networks);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Some(docker) = common::docker().await else {
                    return;
                };
                let mut filters = HashMap::new();
                filters.insert(
                    "label".to_string(),
                    vec![format!("dev.bottle.agent={agent}")],
                );
                let cs = docker
                    .list_containers(Some(ListContainersOptions {
                        all: true,
                        filters: Some(filters.clone()),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_or_default();
                let mut names: Vec<String> = cs.into_iter().filter_map(|c| c.id).collect();
                names.extend(containers);
                for c in names {
                    let _ = docker
                        .remove_container(
                            &c,
                            Some(RemoveContainerOptions {
                                force: true,
                                v: true,
                                link: false,
                            }),
                        )
                        .await;
                }
                let ns = docker
                    .list_networks(Some(ListNetworksOptions {
                        filters: Some(filters.clone()),
                    }))
                    .await
                    .unwrap_or_default();
                let mut nets: Vec<String> = ns.into_iter().filter_map(|n| n.name).collect();
                nets.extend(networks);
                for n in nets {
                    let _ = docker.remove_network(&n).await;
                }
                let vs = docker
                    .list_volumes(Some(ListVolumesOptions {
                        filters: Some(filters),
                    }))
                    .await
                    .map(|l| l.volumes.unwrap_or_default())
                    .unwrap_or_default();
                for v in vs {
                    let _ = docker
                        .remove_volume(
                            &v.name,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// The suite's "internet": a bridge network with one upstream container
/// (busybox httpd on port 80 serving `hello.txt`) reachable as
/// `upstream.bottle.test`. Returns (network name, container name, its IP).
pub(crate) async fn start_upstream(
    docker: &Docker,
    fx: &Fixture,
    tag: &str,
) -> (String, String, String) {
    let net = format!("bottle-test-up-{tag}");
    let name = format!("bottle-test-upstream-{tag}");
    let mut labels = HashMap::new();
    labels.insert(common::TEST_LABEL.to_string(), "1".to_string());
    labels.insert("dev.bottle.agent".to_string(), fx.agent.clone());
    docker
        .create_network(NetworkCreateRequest {
            name: net.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let image = format!("{}/bottle/{}@{}", fx.reg.localhost(), fx.agent, fx.digest);
    bottle::engine::pull(docker, &image, |_| {}).await.unwrap();
    let mut endpoints = HashMap::new();
    endpoints.insert(
        net.clone(),
        EndpointSettings {
            aliases: Some(vec![
                "upstream.bottle.test".into(),
                "denied.bottle.test".into(),
            ]),
            ..Default::default()
        },
    );
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                platform: String::new(),
            }),
            ContainerCreateBody {
                image: Some(image),
                user: Some("0:0".into()),
                cmd: Some(vec![
                    "httpd".into(),
                    "-f".into(),
                    "-p".into(),
                    "80".into(),
                    "-h".into(),
                    "/www".into(),
                ]),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    network_mode: Some(net.clone()),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(endpoints),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let info = docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&net).cloned())
        .and_then(|e| e.ip_address)
        .unwrap();
    (net, name, ip)
}

pub(crate) fn root_path(fx: &Fixture) -> &Path {
    fx.root.path()
}

/// The builtin sidecar image for tests: this crate's `bottle` binary
/// (stripped when `strip` is available) with the shared libraries it links,
/// entrypoint `/bottle proxy` (as the builtin image has it), pushed to the fixture's registry. Returns
/// `<registry>/bottle/sidecar@sha256:…` for `--sidecar-image`.
pub(crate) async fn sidecar_image(fx: &Fixture) -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_bottle"));
    let work = tempfile::tempdir().unwrap();
    let stripped = work.path().join("bottle");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let exe = if ok { stripped } else { bin };
    let file = |path: &str, src: PathBuf, mode| Entry {
        path: path.into(),
        mode,
        uid: 0,
        gid: 0,
        kind: EntryKind::File(FileSource::Path(src)),
    };
    let dir = |path: &str| Entry {
        path: path.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        kind: EntryKind::Dir,
    };
    let mut entries = vec![
        file("bottle", exe, 0o755),
        dir("etc"),
        dir("etc/bottle"),
        dir("lib"),
        dir("lib/x86_64-linux-gnu"),
        dir("lib64"),
        file(
            "lib64/ld-linux-x86-64.so.2",
            std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap(),
            0o755,
        ),
        Entry {
            path: "tmp".into(),
            mode: 0o1777,
            uid: 0,
            gid: 0,
            kind: EntryKind::Dir,
        },
    ];
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        let src = std::fs::canonicalize(format!("/lib/x86_64-linux-gnu/{lib}")).unwrap();
        entries.push(file(&format!("lib/x86_64-linux-gnu/{lib}"), src, 0o755));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let spec = ImageSpec {
        base: Base::Scratch,
        layers: vec![LayerSpec {
            name: "sidecar".into(),
            entries,
        }],
        config: ConfigSpec {
            user: "65534:65534".into(),
            entrypoint: vec!["/bottle".into(), "proxy".into()],
            ..ConfigSpec::default()
        },
        mtime: 0,
    };
    let store = BlobStore::open(work.path().join("store")).unwrap();
    let image = build(&spec, &store).unwrap();
    RegistryClient::new(&fx.reg.host())
        .unwrap()
        .push("bottle/sidecar", None, &image, &store, &Progress::hidden())
        .await
        .unwrap();
    format!(
        "{}/bottle/sidecar@{}",
        fx.reg.localhost(),
        image.manifest_digest
    )
}

/// Build `spec` and push it to the fixture's registry as `repo`; returns
/// `<registry>/<repo>@sha256:…` for `bottle run`.
pub(crate) async fn push_spec(fx: &Fixture, repo: &str, spec: &ImageSpec) -> String {
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let image = build(spec, &store).unwrap();
    RegistryClient::new(&fx.reg.host())
        .unwrap()
        .push(repo, None, &image, &store, &Progress::hidden())
        .await
        .unwrap();
    format!("{}/{repo}@{}", fx.reg.localhost(), image.manifest_digest)
}

/// A name this machine's own configuration says it resolves, read at run
/// time (never written into the code): the host of the first URI in the
/// package sources (`/etc/apt/sources.list.d/*.sources` `URIs:` lines, then
/// `deb` lines of `/etc/apt/sources.list`), else the first `search` domain
/// of `/etc/resolv.conf`. `None` when the machine names none.
pub(crate) fn host_resolvable_name() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push(t);
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    let uri_host = |uri: &str| -> Option<String> {
        let rest = uri.split_once("://")?.1;
        let host = rest.split(['/', ':']).next()?;
        (!host.is_empty() && host.contains('.') && host.parse::<std::net::IpAddr>().is_err())
            .then(|| host.to_string())
    };
    for t in &texts {
        for line in t.lines().map(str::trim) {
            let uris = if let Some(u) = line.strip_prefix("URIs:") {
                u
            } else if line.starts_with("deb ") || line.starts_with("deb-src ") {
                line
            } else {
                continue;
            };
            if let Some(h) = uris.split_whitespace().find_map(uri_host) {
                return Some(h);
            }
        }
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    resolv.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("search")?;
        rest.split_whitespace()
            .find(|d| d.contains('.'))
            .map(str::to_string)
    })
}

/// A project root with only a lockfile (no registry, no engine needed):
/// enough for `--dry-run` and for the checks that happen before any pull.
pub(crate) fn lock_only_root(agent: &str, allow: &[&str], env: &[&str]) -> tempfile::TempDir {
    let mut allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    allow.sort();
    let mut env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
    env.sort();
    let policy = Policy {
        schema: 1,
        agent: agent.to_string(),
        egress: Egress {
            allow,
            ssh: vec!["github.com".into()],
        },
        env,
        sidecar: Sidecar {
            kind: SidecarKind::Builtin,
            image: None,
        },
        limits: Limits::default(),
        secrets: vec![],
    };
    project_with_lockfile(
        &policy,
        &format!("bottle/{agent}"),
        &format!("sha256:{}", "ab".repeat(32)),
    )
}

/// A project root (`agents/`, `lockfiles/`) whose only content is the
/// lockfile of `policy.agent`, locking `repo@digest`.
fn project_with_lockfile(policy: &Policy, repo: &str, digest: &str) -> tempfile::TempDir {
    let agent = &policy.agent;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("agents")).unwrap();
    std::fs::create_dir_all(root.path().join("lockfiles")).unwrap();
    let lock = serde_json::json!({
        "schema": 1,
        "agent": agent,
        "policy": policy,
        "image": { "repository": repo, "manifest_digest": digest },
    });
    std::fs::write(
        root.path()
            .join("lockfiles")
            .join(format!("{agent}.lock.json")),
        serde_json::to_string_pretty(&lock).unwrap(),
    )
    .unwrap();
    root
}
