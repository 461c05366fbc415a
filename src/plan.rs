//! The run plan: a pure function from (image policy, image facts, CLI
//! options, the NAMES of the host's environment variables) to everything
//! `bottle run` will create — names, labels, networks, env, mounts, limits,
//! the sidecar and its allowlist. `--dry-run` prints it; `runner` executes it.
//!
//! Invariants:
//! - No I/O and no clock here: the run id, owner pid and start time are inputs.
//! - The plan never holds a secret. Forwarded variables appear as
//!   [`EnvValue::Host`] (the host variable's name and whether it is set); the
//!   runner reads the value at container creation and hands it to the engine
//!   API only. Only proxy settings are literal values.
//! - Every container and network carries [`LABEL_RUN`], [`LABEL_ROLE`],
//!   [`LABEL_AGENT`] and the owner labels, which `ps`/`gc` rely on.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::host::Pattern;
use crate::policy::{Limits, Policy, SidecarKind};

pub const LABEL_RUN: &str = "dev.bottle.run";
pub const LABEL_AGENT: &str = "dev.bottle.agent";
pub const LABEL_ROLE: &str = "dev.bottle.role";
pub const LABEL_OWNER_PID: &str = "dev.bottle.owner-pid";
/// Start time of the owning process (clock ticks since boot, from
/// `/proc/<pid>/stat`), so a recycled pid is not mistaken for the owner.
pub const LABEL_OWNER_START: &str = "dev.bottle.owner-start";
pub const LABEL_OWNER_HOST: &str = "dev.bottle.owner-host";
pub const LABEL_STARTED: &str = "dev.bottle.started";

/// Host variable forwarded to the agent as `CLAUDE_CODE_OAUTH_TOKEN`.
pub const OAUTH_HOST_VAR: &str = "CLAUDE_BOTTLE_OAUTH_TOKEN";
pub const OAUTH_AGENT_VAR: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// The model API host the sidecar's API route forwards to (a default
/// egress host; see README "Default egress hosts").
pub const API_HOST: &str = "api.anthropic.com";
/// Host variable holding an API key (sent as `x-api-key` by the API route).
pub const API_KEY_VAR: &str = "ANTHROPIC_API_KEY";
/// Where the run CA bundle (the image's roots plus the run CA) is uploaded
/// in the agent (an anonymous volume, like the sidecar's config dir).
pub const AGENT_CA_DIR: &str = "/etc/bottle-ca";
pub const AGENT_CA_FILE: &str = "roots.pem";
/// Variables pointing clients (OpenSSL, Node, Python requests, curl, git)
/// at the bundle.
pub const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];
/// Preflight line when the builtin sidecar holds the credentials.
pub const CREDENTIALS_HELD_LINE: &str =
    "  credentials: held by the sidecar; agent has placeholders";
/// Preflight line for pipelock: what does not hold.
pub const CREDENTIALS_PIPELOCK_LINE: &str = "  credentials: IN THE AGENT'S ENVIRONMENT (pipelock does not inject: the agent holds the real values; no placeholders, no API route, no interception; secret scanning only of what pipelock itself reads, never inside HTTPS tunnels)";

/// The port both sidecars listen on inside the bottle (pipelock's default).
pub const SIDECAR_PORT: u16 = crate::egress::LISTEN_PORT;
/// Where the per-run sidecar config is uploaded (an anonymous volume: the
/// sidecar's root filesystem is read-only, and the engine refuses uploads there).
pub const SIDECAR_CONFIG_DIR: &str = "/etc/bottle";
pub const SIDECAR_CONFIG_PATH: &str = crate::egress::CONFIG_PATH_IN_CONTAINER;
/// Unprivileged uid used when an image's own user is root or unset.
pub const FALLBACK_USER: &str = "65534:65534";

/// What the caller asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `-- cmd…`; empty means the image's own entrypoint, interactively.
    pub command: Vec<String>,
    /// Allocate a TTY (interactive session on a terminal).
    pub tty: bool,
    /// Absolute host path mounted at `/workspace`.
    pub workspace: Option<PathBuf>,
    pub sidecar: Option<SidecarKind>,
    pub memory_mib: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    /// Size of each writable filesystem (home, /tmp) in MiB.
    pub disk_mib: Option<u64>,
    /// Existing network for the sidecar's way out; `None` = a per-run bridge.
    pub egress_network: Option<String>,
    /// Allowlisted hosts the sidecar may reach on private addresses.
    pub trust_hosts: Vec<String>,
    /// The engine forwards DNS from internal networks (CVE-2024-29018): give
    /// the agent a resolver upstream that answers nothing.
    pub dns_mitigation: bool,
}

/// What the runner learned about the image before planning.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFacts {
    /// What the engine pulls and runs: `<registry>/<repo>@sha256:…`.
    pub reference: String,
    pub digest: String,
    pub size: Option<u64>,
    /// The image config's `User` (empty = root).
    pub user: String,
    /// The agent's home (from the image's `HOME`, default `/home/agent`).
    pub home: String,
    /// Paths the image declares as volumes (each becomes a bounded tmpfs).
    pub volumes: Vec<String>,
}

/// The sidecar image the runner will use (the builtin one is loaded from
/// bottle's own binary; pipelock is pinned by digest in the policy).
#[derive(Debug, Clone, Serialize)]
pub struct SidecarImage {
    pub image: String,
    pub digest: Option<String>,
    pub user: String,
}

/// Everything that varies per invocation and is not an option.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// Short random slug, unique per run.
    pub slug: String,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub owner_host: String,
    /// Seconds since the epoch.
    pub started: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub run_id: String,
    pub agent: String,
    pub image: ImageFacts,
    pub networks: Networks,
    pub container: AgentContainer,
    pub sidecar: SidecarPlan,
    pub limits: Limits,
    /// The isolation the engine reports (not known to `--dry-run`).
    pub engine: Option<crate::engine::EngineSecurity>,
    /// The preflight egress line: `<N> hosts allowed (a, b, c, +K more)`.
    pub egress_summary: String,
    pub ssh_summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Networks {
    /// Per-run `--internal` network: the agent's only network.
    pub internal: String,
    /// The sidecar's way out.
    pub egress: String,
    /// Whether the runner creates (and removes) the egress network.
    pub egress_created: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentContainer {
    pub name: String,
    pub user: String,
    pub env: Vec<EnvVar>,
    /// Empty: the image's entrypoint/cmd.
    pub command: Vec<String>,
    pub tty: bool,
    pub home: String,
    pub workspace: Option<PathBuf>,
    /// Resolver upstreams for the engine's embedded DNS (`["127.0.0.1"]`
    /// with the mitigation: nothing answers there, so only names inside the
    /// bottle resolve).
    pub dns: Vec<String>,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvValue {
    /// A literal, non-secret value (proxy settings).
    Fixed(String),
    /// Copied from the host variable `from` at start; `set` says whether the
    /// host has it. The value never enters the plan.
    Host { from: String, set: bool },
}

#[derive(Debug, Clone, Serialize)]
pub struct SidecarPlan {
    pub kind: SidecarKind,
    pub name: String,
    pub image: SidecarImage,
    pub port: u16,
    pub config_path: String,
    pub allow: Vec<String>,
    pub ssh: Vec<String>,
    pub trusted: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// The sidecar holds every forwarded variable's value (builtin only);
    /// the agent gets placeholders.
    pub holds_secrets: bool,
    /// Bindings of held secrets to hosts (see `policy::SecretBinding`).
    pub secrets: Vec<crate::policy::SecretBinding>,
    /// The model API route: (agent variable it authenticates with, header).
    pub api_route: Option<(String, String)>,
    /// A run CA is made and given to the agent (a bound secret is set).
    pub intercept: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "--trust-host `{0}` is not in this bottle's egress allowlist; only allowlisted hosts can be marked trusted"
    )]
    TrustNotAllowed(String),
    #[error("--{0} must be a positive number")]
    Limit(&'static str),
    #[error("--workspace `{0}` must be an absolute path")]
    Workspace(PathBuf),
    #[error(
        "the image's policy asks for the `pipelock` sidecar but names no pinned image; re-lock the agent or pass --sidecar builtin"
    )]
    NoPipelockImage,
}

impl crate::error::Classify for PlanError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::BadInput
    }
}

/// Which sidecar a run will use: the option wins over the policy.
pub fn sidecar_kind(policy: &Policy, options: &RunOptions) -> SidecarKind {
    options.sidecar.unwrap_or(policy.sidecar.kind)
}

/// Preflight line for the pipelock sidecar: what it does not enforce that
/// the builtin does (per-port rules, SNI, Host header; README's sidecar
/// table has the list).
pub const PIPELOCK_GAPS_LINE: &str = "  pipelock: ports and SNI not enforced; see README";

/// Build the plan. `host_env` holds the NAMES of the variables set on the host.
pub fn plan(
    policy: &Policy,
    image: ImageFacts,
    sidecar_image: SidecarImage,
    options: &RunOptions,
    host_env: &BTreeSet<String>,
    id: &RunIdentity,
) -> Result<RunPlan, PlanError> {
    let agent = policy.agent.clone();
    let base = format!("bottle-{}-{}", agent, id.slug);
    let run_id = format!("{}-{}", agent, id.slug);
    let kind = sidecar_kind(policy, options);
    if kind == SidecarKind::Pipelock && policy.sidecar.image.is_none() {
        return Err(PlanError::NoPipelockImage);
    }

    let mut limits = policy.limits;
    for (opt, slot, name) in [
        (options.memory_mib, &mut limits.memory_mib, "memory"),
        (options.cpu_millis, &mut limits.cpu_millis, "cpus"),
        (options.pids, &mut limits.pids, "pids"),
        (options.disk_mib, &mut limits.disk_mib, "disk"),
    ] {
        if let Some(v) = opt {
            if v == 0 {
                return Err(PlanError::Limit(name));
            }
            *slot = v;
        }
    }
    if let Some(w) = &options.workspace {
        if !w.is_absolute() {
            return Err(PlanError::Workspace(w.clone()));
        }
    }

    let patterns: Vec<Pattern> = policy.allow_patterns();
    let mut trusted = Vec::new();
    for t in &options.trust_hosts {
        let host = crate::host::normalize(t).map_err(|_| PlanError::TrustNotAllowed(t.clone()))?;
        if !patterns.iter().any(|p| p.matches(&host)) {
            return Err(PlanError::TrustNotAllowed(t.clone()));
        }
        trusted.push(host);
    }
    trusted.sort();
    trusted.dedup();

    let sidecar_name = format!("{base}-sidecar");
    let proxy = format!("http://{sidecar_name}:{SIDECAR_PORT}");
    let mut env = Vec::new();
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        env.push(EnvVar {
            name: name.into(),
            value: EnvValue::Fixed(proxy.clone()),
        });
    }
    let holds_secrets = kind == SidecarKind::Builtin;
    let set = |n: &str| host_env.contains(n);
    let api_route = if !holds_secrets {
        None
    } else if set(OAUTH_HOST_VAR) {
        Some((OAUTH_AGENT_VAR.to_string(), "bearer".to_string()))
    } else if policy.env.iter().any(|e| e == API_KEY_VAR) && set(API_KEY_VAR) {
        Some((API_KEY_VAR.to_string(), "x-api-key".to_string()))
    } else {
        None
    };
    let intercept = holds_secrets && policy.secrets.iter().any(|b| set(&b.env));
    // Loopback only: every other destination, including other containers,
    // goes through the sidecar, which decides. The API route is the
    // sidecar itself, reached directly.
    let no_proxy = if api_route.is_some() {
        format!("localhost,127.0.0.1,::1,{sidecar_name}")
    } else {
        "localhost,127.0.0.1,::1".to_string()
    };
    for name in ["NO_PROXY", "no_proxy"] {
        env.push(EnvVar {
            name: name.into(),
            value: EnvValue::Fixed(no_proxy.clone()),
        });
    }
    if api_route.is_some() {
        env.push(EnvVar {
            name: "ANTHROPIC_BASE_URL".into(),
            value: EnvValue::Fixed(format!("http://{sidecar_name}:{SIDECAR_PORT}")),
        });
    }
    if intercept {
        for name in CA_VARS {
            env.push(EnvVar {
                name: (*name).into(),
                value: EnvValue::Fixed(format!("{AGENT_CA_DIR}/{AGENT_CA_FILE}")),
            });
        }
    }
    env.push(EnvVar {
        name: OAUTH_AGENT_VAR.into(),
        value: EnvValue::Host {
            from: OAUTH_HOST_VAR.into(),
            set: host_env.contains(OAUTH_HOST_VAR),
        },
    });
    for name in &policy.env {
        if name == OAUTH_AGENT_VAR {
            continue;
        }
        env.push(EnvVar {
            name: name.clone(),
            value: EnvValue::Host {
                from: name.clone(),
                set: host_env.contains(name),
            },
        });
    }

    let labels = |role: &str| -> Vec<(String, String)> {
        vec![
            (LABEL_RUN.into(), run_id.clone()),
            (LABEL_AGENT.into(), agent.clone()),
            (LABEL_ROLE.into(), role.into()),
            (LABEL_OWNER_PID.into(), id.owner_pid.to_string()),
            (LABEL_OWNER_START.into(), id.owner_start.to_string()),
            (LABEL_OWNER_HOST.into(), id.owner_host.clone()),
            (LABEL_STARTED.into(), id.started.to_string()),
        ]
    };

    let user = if is_root(&image.user) {
        FALLBACK_USER.to_string()
    } else {
        image.user.clone()
    };
    let egress_created = options.egress_network.is_none();
    let egress = options
        .egress_network
        .clone()
        .unwrap_or_else(|| format!("{base}-egress"));

    let sidecar_user = if is_root(&sidecar_image.user) {
        FALLBACK_USER.to_string()
    } else {
        sidecar_image.user.clone()
    };
    let mut sidecar_image = sidecar_image;
    sidecar_image.user = sidecar_user;

    Ok(RunPlan {
        egress_summary: egress_summary(&policy.egress.allow),
        ssh_summary: ssh_summary(&policy.egress.ssh),
        networks: Networks {
            internal: format!("{base}-net"),
            egress,
            egress_created,
        },
        container: AgentContainer {
            name: base.clone(),
            user,
            env,
            command: options.command.clone(),
            tty: options.tty,
            home: image.home.clone(),
            workspace: options.workspace.clone(),
            dns: if options.dns_mitigation {
                vec!["127.0.0.1".into()]
            } else {
                vec![]
            },
            labels: labels("agent"),
        },
        sidecar: SidecarPlan {
            kind,
            name: sidecar_name,
            image: sidecar_image,
            port: SIDECAR_PORT,
            config_path: SIDECAR_CONFIG_PATH.into(),
            allow: policy.egress.allow.clone(),
            ssh: policy.egress.ssh.clone(),
            trusted,
            labels: labels("sidecar"),
            holds_secrets,
            secrets: if holds_secrets {
                policy.secrets.clone()
            } else {
                vec![]
            },
            api_route,
            intercept,
        },
        limits,
        engine: None,
        image,
        run_id,
        agent,
    })
}

impl RunPlan {
    /// Labels for a network of this run.
    pub fn network_labels(&self) -> Vec<(String, String)> {
        self.labels_for("network")
    }

    /// The run's labels with `role` (`network`, `home`, …).
    pub fn labels_for(&self, role: &str) -> Vec<(String, String)> {
        let mut l = self.container.labels.clone();
        for (k, v) in &mut l {
            if k == LABEL_ROLE {
                *v = role.into();
            }
        }
        l
    }

    /// The preflight summary, one line each, for a human to approve.
    pub fn preflight_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let size = self
            .image
            .size
            .map(|s| format!(", {}", human_size(s)))
            .unwrap_or_default();
        out.push(format!(
            "bottle {} ({}{})",
            self.agent,
            short_digest(&self.image.digest),
            size
        ));
        let names: Vec<String> = self
            .container
            .env
            .iter()
            .filter_map(|e| match &e.value {
                EnvValue::Host { from, set } => Some(if from == &e.name {
                    format!("{}{}", e.name, if *set { "" } else { " (unset)" })
                } else {
                    format!(
                        "{} (from {}){}",
                        e.name,
                        from,
                        if *set { "" } else { " (unset)" }
                    )
                }),
                EnvValue::Fixed(_) => None,
            })
            .collect();
        out.push(format!("  env: {}", names.join(", ")));
        out.push(format!("  egress: {}", self.egress_summary));
        out.push(format!("  ssh: {}", self.ssh_summary));
        if !self.sidecar.trusted.is_empty() {
            out.push(format!(
                "  trusted (private addresses allowed): {}",
                self.sidecar.trusted.join(", ")
            ));
        }
        out.push(format!(
            "  sidecar: {} ({})",
            self.sidecar.kind.as_str(),
            self.sidecar
                .image
                .digest
                .as_deref()
                .map(short_digest)
                .unwrap_or_else(|| self.sidecar.image.image.clone())
        ));
        if self.sidecar.kind == SidecarKind::Pipelock {
            out.push(PIPELOCK_GAPS_LINE.into());
        }
        if self.sidecar.holds_secrets {
            out.push(CREDENTIALS_HELD_LINE.into());
            if let Some((var, _)) = &self.sidecar.api_route {
                out.push(format!(
                    "  api route: {var} -> {API_HOST} (ANTHROPIC_BASE_URL)"
                ));
            }
            for b in &self.sidecar.secrets {
                out.push(format!(
                    "  bound: {} -> {} ({})",
                    b.env,
                    b.hosts.join(", "),
                    b.header
                ));
            }
        } else {
            out.push(CREDENTIALS_PIPELOCK_LINE.into());
        }
        if let Some(w) = &self.container.workspace {
            out.push(format!(
                "  workspace: {} -> /workspace (read-write)",
                w.display()
            ));
        }
        out.push(format!(
            "  limits: {} MiB memory, {} CPUs, {} pids, {} MiB disk (home and /tmp, in memory)",
            self.limits.memory_mib,
            cpus(self.limits.cpu_millis),
            self.limits.pids,
            self.limits.disk_mib
        ));
        if let Some(e) = &self.engine {
            out.push(format!("  engine: {}", e.summary()));
        }
        out
    }
}

fn is_root(user: &str) -> bool {
    let u = user.split(':').next().unwrap_or("");
    u.is_empty() || u == "root" || u == "0"
}

/// `<N> hosts allowed (a, b, c, +K more)`, the first three in sorted order.
pub fn egress_summary(allow: &[String]) -> String {
    let mut sorted: Vec<&str> = allow.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let n = sorted.len();
    let noun = if n == 1 { "host" } else { "hosts" };
    if n == 0 {
        return "0 hosts allowed (no egress)".into();
    }
    let shown = sorted[..n.min(3)].join(", ");
    if n > 3 {
        format!("{n} {noun} allowed ({shown}, +{} more)", n - 3)
    } else {
        format!("{n} {noun} allowed ({shown})")
    }
}

pub fn ssh_summary(ssh: &[String]) -> String {
    if ssh.is_empty() {
        "none".into()
    } else {
        format!("port 22 to {}", ssh.join(", "))
    }
}

pub fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

fn cpus(millis: u64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{:.3}", millis as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Egress, Sidecar};

    /// The original project's seven default hosts (its "7 hosts allowed"
    /// example); bottle's own defaults differ, the format does not.
    const ORIGINAL_SEVEN: &[&str] = &[
        "api.anthropic.com",
        "claude.ai",
        "console.anthropic.com",
        "platform.claude.com",
        "statsig.anthropic.com",
        "sentry.io",
        "downloads.claude.ai",
    ];

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn policy(allow: Vec<String>) -> Policy {
        Policy {
            schema: 1,
            agent: "hello".into(),
            egress: Egress {
                allow,
                ssh: vec!["github.com".into()],
            },
            env: vec!["GITHUB_TOKEN".into(), "OTHER".into()],
            sidecar: Sidecar {
                kind: SidecarKind::Builtin,
                image: None,
            },
            limits: Limits::default(),
            secrets: vec![],
        }
    }

    fn facts() -> ImageFacts {
        ImageFacts {
            reference: format!("localhost:5000/hello@sha256:{}", "a".repeat(64)),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: Some(3 * 1024 * 1024),
            user: String::new(),
            home: "/home/agent".into(),
            volumes: vec![],
        }
    }

    fn id() -> RunIdentity {
        RunIdentity {
            slug: "0a1b2c3d".into(),
            owner_pid: 42,
            owner_start: 7,
            owner_host: "h".into(),
            started: 1,
        }
    }

    fn side() -> SidecarImage {
        SidecarImage {
            image: "sha256:beef".into(),
            digest: None,
            user: String::new(),
        }
    }

    #[test]
    fn egress_line_matches_the_original_examples() {
        let seven = sorted(ORIGINAL_SEVEN);
        assert_eq!(
            egress_summary(&seven),
            "7 hosts allowed (api.anthropic.com, claude.ai, console.anthropic.com, +4 more)"
        );
        let mut nine = seven.clone();
        nine.push("api.openai.com".into());
        nine.push("github.com".into());
        nine.sort();
        assert_eq!(
            egress_summary(&nine),
            "9 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +6 more)"
        );
        // Order of the input does not matter; the first three are sorted.
        nine.reverse();
        assert!(
            egress_summary(&nine)
                .starts_with("9 hosts allowed (api.anthropic.com, api.openai.com, claude.ai,")
        );
        assert_eq!(egress_summary(&["a.com".into()]), "1 host allowed (a.com)");
        assert_eq!(
            egress_summary(&["b.com".into(), "a.com".into(), "c.com".into()]),
            "3 hosts allowed (a.com, b.com, c.com)"
        );
    }

    #[test]
    fn plan_names_labels_proxy_and_unset_markers() {
        let host: BTreeSet<String> = ["GITHUB_TOKEN".to_string()].into();
        let p = plan(
            &policy(sorted(ORIGINAL_SEVEN)),
            facts(),
            side(),
            &RunOptions::default(),
            &host,
            &id(),
        )
        .unwrap();
        assert_eq!(p.container.name, "bottle-hello-0a1b2c3d");
        assert_eq!(p.sidecar.name, "bottle-hello-0a1b2c3d-sidecar");
        assert_eq!(p.networks.internal, "bottle-hello-0a1b2c3d-net");
        assert_eq!(p.networks.egress, "bottle-hello-0a1b2c3d-egress");
        assert!(p.networks.egress_created);
        assert_eq!(
            p.container.user, FALLBACK_USER,
            "root images run unprivileged"
        );
        let fixed = |n: &str| {
            p.container
                .env
                .iter()
                .find(|e| e.name == n)
                .map(|e| e.value.clone())
        };
        let proxy = "http://bottle-hello-0a1b2c3d-sidecar:8888".to_string();
        for n in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            assert_eq!(fixed(n), Some(EnvValue::Fixed(proxy.clone())));
        }
        assert_eq!(
            fixed("NO_PROXY"),
            Some(EnvValue::Fixed("localhost,127.0.0.1,::1".into()))
        );
        assert_eq!(
            fixed(OAUTH_AGENT_VAR),
            Some(EnvValue::Host {
                from: OAUTH_HOST_VAR.into(),
                set: false
            })
        );
        let lines = p.preflight_lines().join("\n");
        assert!(lines.contains(
            "env: CLAUDE_CODE_OAUTH_TOKEN (from CLAUDE_BOTTLE_OAUTH_TOKEN) (unset), GITHUB_TOKEN, OTHER (unset)"
        ), "{lines}");
        assert!(lines.contains(
            "egress: 7 hosts allowed (api.anthropic.com, claude.ai, console.anthropic.com, +4 more)"
        ));
        assert!(lines.contains("ssh: port 22 to github.com"));
        assert!(lines.contains(
            "limits: 4096 MiB memory, 2 CPUs, 512 pids, 1024 MiB disk (home and /tmp, in memory)"
        ));
        assert!(!lines.contains("engine:"), "the plan alone knows no engine");
        assert!(lines.contains("sha256:aaaaaaaaaaaa, 3.0 MiB"));
        for (k, _) in &p.container.labels {
            assert!(k.starts_with("dev.bottle."));
        }
        assert!(
            p.container
                .labels
                .contains(&(LABEL_ROLE.into(), "agent".into()))
        );
        assert!(
            p.sidecar
                .labels
                .contains(&(LABEL_ROLE.into(), "sidecar".into()))
        );
        assert!(
            p.network_labels()
                .contains(&(LABEL_ROLE.into(), "network".into()))
        );
        assert!(p.container.dns.is_empty());
    }

    #[test]
    fn builtin_holds_credentials_routes_the_api_and_trusts_the_run_ca() {
        let host: BTreeSet<String> =
            [OAUTH_HOST_VAR.to_string(), "GITHUB_TOKEN".to_string()].into();
        let mut pol = policy(sorted(ORIGINAL_SEVEN));
        pol.secrets = vec![crate::policy::SecretBinding {
            env: "GITHUB_TOKEN".into(),
            hosts: vec!["github.com".into()],
            header: "basic".into(),
        }];
        let p = plan(&pol, facts(), side(), &RunOptions::default(), &host, &id()).unwrap();
        let fixed = |n: &str| {
            p.container
                .env
                .iter()
                .find(|e| e.name == n)
                .and_then(|e| match &e.value {
                    EnvValue::Fixed(v) => Some(v.clone()),
                    EnvValue::Host { .. } => None,
                })
        };
        let sidecar = &p.sidecar.name;
        assert_eq!(
            fixed("ANTHROPIC_BASE_URL"),
            Some(format!("http://{sidecar}:{SIDECAR_PORT}"))
        );
        assert!(fixed("NO_PROXY").unwrap().ends_with(&format!(",{sidecar}")));
        for v in CA_VARS {
            assert_eq!(fixed(v), Some(format!("{AGENT_CA_DIR}/{AGENT_CA_FILE}")));
        }
        assert!(p.sidecar.holds_secrets && p.sidecar.intercept);
        assert_eq!(
            p.sidecar.api_route,
            Some((OAUTH_AGENT_VAR.into(), "bearer".into()))
        );
        let lines = p.preflight_lines();
        assert!(
            lines.iter().any(|l| l == CREDENTIALS_HELD_LINE),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "  bound: GITHUB_TOKEN -> github.com (basic)"),
            "{lines:?}"
        );

        // pipelock cannot inject: no route, no CA, and the preflight says so.
        let options = RunOptions {
            sidecar: Some(SidecarKind::Pipelock),
            ..RunOptions::default()
        };
        pol.sidecar.image = Some(format!(
            "{}@sha256:{}",
            crate::lock::PIPELOCK_IMAGE,
            "b".repeat(64)
        ));
        let p = plan(&pol, facts(), side(), &options, &host, &id()).unwrap();
        assert!(!p.sidecar.holds_secrets && !p.sidecar.intercept);
        assert!(
            !p.container
                .env
                .iter()
                .any(|e| e.name == "ANTHROPIC_BASE_URL")
        );
        let lines = p.preflight_lines();
        assert!(
            lines.iter().any(|l| l == CREDENTIALS_PIPELOCK_LINE),
            "{lines:?}"
        );
    }

    #[test]
    fn preflight_names_pipelock_gaps_only_for_pipelock() {
        let host = BTreeSet::new();
        let mut pol = policy(sorted(ORIGINAL_SEVEN));
        pol.sidecar = Sidecar {
            kind: SidecarKind::Pipelock,
            image: Some(format!(
                "{}@sha256:{}",
                crate::lock::PIPELOCK_IMAGE,
                "b".repeat(64)
            )),
        };
        let run = |sidecar: Option<SidecarKind>| {
            let options = RunOptions {
                sidecar,
                ..RunOptions::default()
            };
            plan(&pol, facts(), side(), &options, &host, &id())
                .unwrap()
                .preflight_lines()
        };
        let lines = run(None);
        assert!(lines.iter().any(|l| l == PIPELOCK_GAPS_LINE), "{lines:?}");
        let lines = run(Some(SidecarKind::Builtin));
        assert!(!lines.iter().any(|l| l.contains("pipelock")), "{lines:?}");
    }

    #[test]
    fn options_override_limits_and_validate_trust() {
        let opts = RunOptions {
            memory_mib: Some(256),
            cpu_millis: Some(500),
            pids: Some(64),
            disk_mib: Some(32),
            trust_hosts: vec!["API.Anthropic.com".into()],
            egress_network: Some("mine".into()),
            dns_mitigation: true,
            ..Default::default()
        };
        let p = plan(
            &policy(sorted(ORIGINAL_SEVEN)),
            facts(),
            side(),
            &opts,
            &BTreeSet::new(),
            &id(),
        )
        .unwrap();
        assert_eq!(
            p.limits,
            Limits {
                memory_mib: 256,
                cpu_millis: 500,
                pids: 64,
                disk_mib: 32,
            }
        );
        assert!(p.preflight_lines().join("\n").contains("32 MiB disk"));
        assert_eq!(p.sidecar.trusted, vec!["api.anthropic.com".to_string()]);
        assert_eq!(p.networks.egress, "mine");
        assert!(!p.networks.egress_created);
        assert_eq!(p.container.dns, vec!["127.0.0.1".to_string()]);
        assert!(p.preflight_lines().join("\n").contains("0.5 CPUs"));

        let bad = RunOptions {
            trust_hosts: vec!["evil.example".into()],
            ..Default::default()
        };
        assert_eq!(
            plan(
                &policy(sorted(ORIGINAL_SEVEN)),
                facts(),
                side(),
                &bad,
                &BTreeSet::new(),
                &id()
            )
            .unwrap_err(),
            PlanError::TrustNotAllowed("evil.example".into())
        );
        let zero = RunOptions {
            pids: Some(0),
            ..Default::default()
        };
        assert!(
            plan(
                &policy(vec![]),
                facts(),
                side(),
                &zero,
                &BTreeSet::new(),
                &id()
            )
            .is_err()
        );
    }

    #[test]
    fn no_secret_value_ever_enters_the_plan() {
        // SAFETY-free: the plan never reads the environment, so a value can
        // only appear if it were passed in; we pass only names and check
        // that the serialized plan has no value field for host variables.
        let host: BTreeSet<String> =
            [OAUTH_HOST_VAR.to_string(), "GITHUB_TOKEN".to_string()].into();
        let p = plan(
            &policy(vec![]),
            facts(),
            side(),
            &RunOptions::default(),
            &host,
            &id(),
        )
        .unwrap();
        let json = serde_json::to_value(&p).unwrap();
        for e in json["container"]["env"].as_array().unwrap() {
            if let Some(h) = e["value"].get("host") {
                assert_eq!(
                    h.as_object().unwrap().len(),
                    2,
                    "only `from` and `set`: {h}"
                );
            }
        }
    }
}
