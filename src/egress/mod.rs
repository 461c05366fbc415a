//! Egress: the only way out of a bottle.
//!
//! - [`config`] turns a bottle's [`crate::policy::Policy`] into the per-run
//!   sidecar config in pipelock's format, and parses that format back for the
//!   builtin proxy. Pure; hostnames only, never a secret.
//! - [`proxy`] is `bottle proxy`, the builtin sidecar: a strict allowlist
//!   forward proxy (HTTP CONNECT and absolute-form `http://`) on tokio + hyper.
//! - [`image`] builds the builtin sidecar image from the running `bottle`
//!   executable and loads it into the engine.
//!
//! Invariants: both sidecars read the same config file; the builtin proxy
//! refuses to start on a config section it does not implement, so it is never
//! silently weaker than its config.

pub mod config;
pub mod image;
pub mod proxy;

use crate::error::{Classify, ExitKind};

/// Upstream pipelock image repository (the `pipelock` sidecar kind).
pub const PIPELOCK_IMAGE: &str = "ghcr.io/luckypipewrench/pipelock";

/// The pipelock release `lock` pins: `lock` resolves
/// [`PIPELOCK_IMAGE`]`:`[`PIPELOCK_TAG`] on the registry and records the
/// digest it gets. `tests/data/pipelock-keys.txt` (the schema the generated
/// config is held to) names this tag; change both together.
pub const PIPELOCK_TAG: &str = "3.6.0";

/// Digest of [`PIPELOCK_IMAGE`]`:`[`PIPELOCK_TAG`] as a public deployment
/// pins it (`ghcr.io/luckypipewrench/pipelock:3.6.0@sha256:66d65e…` in its
/// start script); no registry is reachable from this project's machines, so
/// it was not re-resolved here. `lock` does not use it: it asks the registry
/// (see docs/DESIGN-NOTES.md, "Egress", for how to re-pin).
pub const PIPELOCK_DIGEST: &str =
    "sha256:66d65eaca81ddae4d0872537bca276bd065baa8f2aebe2960de313cffc53fa47";

/// Port both sidecars listen on inside their container.
pub const LISTEN_PORT: u16 = 8888;

/// Listen address both sidecars use inside their container.
pub const LISTEN_ADDR: &str = "0.0.0.0:8888";

/// Where the runner puts the per-run config inside the sidecar container.
pub const CONFIG_PATH_IN_CONTAINER: &str = "/etc/bottle/egress.yaml";

/// How pipelock is started, as its Dockerfile documents: entrypoint
/// `/pipelock`, arguments below (the config path is appended by the runner
/// after `--config`).
pub const PIPELOCK_ENTRYPOINT: &[&str] = &["/pipelock"];

/// Arguments for pipelock, given the config path inside its container.
pub fn pipelock_cmd(config_path: &str) -> Vec<String> {
    vec![
        "run".into(),
        "--listen".into(),
        LISTEN_ADDR.into(),
        "--config".into(),
        config_path.into(),
    ]
}

/// Arguments (after the image's entrypoint `bottle proxy`) for the builtin
/// sidecar: the config path (`-` = stdin), the listen address, and the ssh
/// hosts, which pipelock's format cannot express per port.
pub fn builtin_cmd(config_path: &str, ssh_hosts: &[String]) -> Vec<String> {
    let mut cmd = vec![
        "--config".to_string(),
        config_path.to_string(),
        "--listen".to_string(),
        LISTEN_ADDR.to_string(),
    ];
    for h in ssh_hosts {
        cmd.push("--ssh-host".into());
        cmd.push(h.clone());
    }
    cmd
}

/// Pipelock's own container healthcheck (its Dockerfile's `HEALTHCHECK`).
pub const PIPELOCK_HEALTHCHECK: &[&str] = &["CMD", "/pipelock", "healthcheck"];

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error(
        "egress config {path}: section `{section}` is enabled but `bottle proxy` does not implement it; \
use the pipelock sidecar (`--sidecar pipelock`) or remove the section"
    )]
    Unimplemented { path: String, section: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("policy cannot be turned into an egress config: {0}")]
    Policy(String),
    #[error("builtin sidecar image: {0}")]
    Image(String),
    /// Building or storing the image failed; keeps the builder's own class
    /// (a full disk is the environment, not a failed check).
    #[error("builtin sidecar image")]
    Build(#[source] crate::oci::OciError),
    #[error("Docker engine: {0}")]
    Engine(String),
}

impl Classify for EgressError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            EgressError::Config { .. }
            | EgressError::Unimplemented { .. }
            | EgressError::Policy(_) => ExitKind::BadInput,
            EgressError::Read { .. }
            | EgressError::Write { .. }
            | EgressError::Listen { .. }
            | EgressError::Engine(_) => ExitKind::Environment,
            EgressError::Image(_) => ExitKind::Failure,
            EgressError::Build(e) => e.exit_kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listen_addr_and_port_agree() {
        // The runner probes LISTEN_PORT; the sidecars bind LISTEN_ADDR.
        assert_eq!(
            super::LISTEN_ADDR.rsplit_once(':').map(|(_, p)| p),
            Some(super::LISTEN_PORT.to_string().as_str())
        );
    }

    #[test]
    fn sidecar_commands() {
        assert_eq!(
            super::pipelock_cmd("/run/bottle/egress.yaml"),
            [
                "run",
                "--listen",
                "0.0.0.0:8888",
                "--config",
                "/run/bottle/egress.yaml"
            ]
        );
        assert_eq!(
            super::builtin_cmd("-", &["github.com".into()]),
            [
                "--config",
                "-",
                "--listen",
                "0.0.0.0:8888",
                "--ssh-host",
                "github.com"
            ]
        );
    }
}
