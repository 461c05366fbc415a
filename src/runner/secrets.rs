//! The runner's side of sidecar-held secrets: read the forwarded variables
//! from the host environment, give the agent a placeholder for each, build
//! the message the sidecar reads on its stdin, and make the per-run CA
//! (certificate to the agent, key to the sidecar only).
//!
//! Invariants:
//! - With the builtin sidecar no real value enters the agent's create body;
//!   real values exist only in [`Secret`] (zeroed on drop, `Debug`
//!   redacted) until written to the sidecar's stdin.
//! - With pipelock (which cannot inject) values go to the agent as before;
//!   the preflight says so.

use bollard::Docker;

use crate::egress::proxy::intercept::ca_params;
use crate::egress::proxy::secrets::{
    ApiRoute, CaKey, Message, SecretEntry, ca_common_name, placeholder,
};
use crate::plan::{self, EnvValue, RunPlan};

use super::RunError;

/// Bytes holding secret values: zeroed when dropped, never printed.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the zeroing from being optimized away as a dead store.
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The per-run interception CA, made in memory.
pub struct RunCa {
    pub common_name: String,
    pub cert_pem: String,
    key_pem: Secret,
}

impl RunCa {
    pub fn new(run_id: &str) -> Result<RunCa, RunError> {
        let err = |e: rcgen::Error| RunError::Io {
            what: "making the run's CA".into(),
            source: std::io::Error::other(e.to_string()),
        };
        let common_name = ca_common_name(run_id);
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = ca_params(&common_name).self_signed(&key).map_err(err)?;
        Ok(RunCa {
            common_name,
            cert_pem: cert.pem(),
            key_pem: Secret(key.serialize_pem().into_bytes()),
        })
    }
}

/// The agent's environment (`NAME=value`) and the secrets the sidecar holds
/// instead. Unset host variables are left out of both.
pub fn agent_env(plan: &RunPlan) -> (Vec<String>, Vec<SecretEntry>) {
    agent_env_from(plan, |name| std::env::var(name).ok())
}

/// As [`agent_env`], reading host variables through `lookup`.
pub fn agent_env_from(
    plan: &RunPlan,
    lookup: impl Fn(&str) -> Option<String>,
) -> (Vec<String>, Vec<SecretEntry>) {
    let held = plan.sidecar.holds_secrets;
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for e in &plan.container.env {
        match &e.value {
            EnvValue::Fixed(v) => env.push(format!("{}={}", e.name, v)),
            EnvValue::Host { from, .. } => {
                let Some(value) = lookup(from) else {
                    continue;
                };
                if !held || value.is_empty() {
                    env.push(format!("{}={}", e.name, value));
                    continue;
                }
                let fake = placeholder(&value);
                env.push(format!("{}={}", e.name, fake));
                let binding = plan.sidecar.secrets.iter().find(|b| b.env == e.name);
                secrets.push(SecretEntry {
                    name: e.name.clone(),
                    value,
                    placeholder: fake,
                    hosts: binding.map(|b| b.hosts.clone()).unwrap_or_default(),
                    header: binding.map(|b| b.header.clone()),
                });
            }
        }
    }
    (env, secrets)
}

/// The JSON the sidecar reads on stdin.
pub fn message(plan: &RunPlan, secrets: Vec<SecretEntry>, ca: Option<&RunCa>) -> Secret {
    let api_route = plan.sidecar.api_route.as_ref().and_then(|(var, header)| {
        secrets.iter().any(|s| &s.name == var).then(|| ApiRoute {
            host: plan::API_HOST.into(),
            secret: var.clone(),
            header: header.clone(),
        })
    });
    let m = Message {
        secrets,
        api_route,
        upstream_ca_pem: upstream_ca(),
        intercept_ca: ca.map(|c| CaKey {
            common_name: c.common_name.clone(),
            key_pem: String::from_utf8_lossy(c.key_pem.bytes()).into_owned(),
        }),
        max_body_bytes: None,
        dlp_patterns: vec![],
    };
    Secret(serde_json::to_vec(&m).unwrap_or_default())
}

/// `BOTTLE_UPSTREAM_CA`: a PEM file of extra roots the sidecar trusts for
/// upstream TLS (the Mozilla roots are always trusted); for test upstreams.
fn upstream_ca() -> Option<String> {
    let path = std::env::var_os("BOTTLE_UPSTREAM_CA")?;
    std::fs::read_to_string(path).ok()
}

/// Where images keep their CA bundle (Debian, Alpine, Fedora layouts).
const IMAGE_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The image's own roots (first bundle found in the created agent
/// container) plus the run CA.
pub async fn bundle(docker: &Docker, agent: &str, ca: &RunCa) -> Vec<u8> {
    let mut out = Vec::new();
    for path in IMAGE_BUNDLES {
        if let Some(b) = crate::engine::download_file(docker, agent, path, 8 << 20).await {
            out = b;
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            break;
        }
    }
    out.extend_from_slice(ca.cert_pem.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::plan::{ImageFacts, RunIdentity, RunOptions, SidecarImage};
    use crate::policy::{Egress, Limits, Policy, SecretBinding, Sidecar, SidecarKind};

    const TOKEN: &str = "sk-ant-oat01-RealRealReal0123456789";
    const GH: &str = "ghp_RealGithub0123456789abcdef";

    fn run_plan(kind: SidecarKind) -> RunPlan {
        let policy = Policy {
            schema: 1,
            agent: "t".into(),
            egress: Egress {
                allow: vec!["api.anthropic.com".into(), "github.com".into()],
                ssh: vec![],
            },
            env: vec!["GITHUB_TOKEN".into()],
            sidecar: Sidecar {
                kind,
                image: Some(format!("p@sha256:{}", "b".repeat(64))),
            },
            limits: Limits::default(),
            secrets: vec![SecretBinding {
                env: "GITHUB_TOKEN".into(),
                hosts: vec!["github.com".into()],
                header: "bearer".into(),
            }],
        };
        let facts = ImageFacts {
            reference: "r".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: None,
            user: String::new(),
            home: "/home/agent".into(),
            volumes: vec![],
        };
        let side = SidecarImage {
            image: "s".into(),
            digest: None,
            user: String::new(),
        };
        let id = RunIdentity {
            slug: "x".into(),
            owner_pid: 1,
            owner_start: 1,
            owner_host: "h".into(),
            started: 0,
        };
        let host: BTreeSet<String> = [plan::OAUTH_HOST_VAR.into(), "GITHUB_TOKEN".into()].into();
        plan::plan(&policy, facts, side, &RunOptions::default(), &host, &id).unwrap()
    }

    fn lookup(n: &str) -> Option<String> {
        match n {
            plan::OAUTH_HOST_VAR => Some(TOKEN.into()),
            "GITHUB_TOKEN" => Some(GH.into()),
            _ => None,
        }
    }

    #[test]
    fn agent_gets_placeholders_and_the_sidecar_the_values() {
        let p = run_plan(SidecarKind::Builtin);
        let (env, held) = agent_env_from(&p, lookup);
        let all = env.join("\n");
        assert!(!all.contains(TOKEN) && !all.contains(GH), "{all}");
        let token = env
            .iter()
            .find_map(|e| e.strip_prefix("CLAUDE_CODE_OAUTH_TOKEN="))
            .unwrap();
        assert!(token.starts_with("sk-ant-oat01-") && token.len() == TOKEN.len());
        assert_eq!(held.len(), 2);
        let gh = held.iter().find(|s| s.name == "GITHUB_TOKEN").unwrap();
        assert_eq!(gh.hosts, vec!["github.com".to_string()]);
        let ca = RunCa::new(&p.run_id).unwrap();
        let m = message(&p, held, Some(&ca));
        assert_eq!(format!("{m:?}"), "Secret(<redacted>)");
        let v: serde_json::Value = serde_json::from_slice(m.bytes()).unwrap();
        assert_eq!(v["api_route"]["secret"], "CLAUDE_CODE_OAUTH_TOKEN");
        assert_eq!(v["api_route"]["host"], plan::API_HOST);
        assert!(
            v["intercept_ca"]["key_pem"]
                .as_str()
                .unwrap()
                .contains("PRIVATE KEY")
        );
        // The sidecar accepts what the runner writes.
        let vault = crate::egress::proxy::secrets::Vault::from_message(
            serde_json::from_slice(m.bytes()).unwrap(),
        )
        .unwrap();
        assert!(vault.intercepts("github.com") && !vault.intercepts("api.anthropic.com"));
        assert!(!ca.cert_pem.contains("PRIVATE"));
    }

    #[test]
    fn pipelock_agent_gets_the_values() {
        let p = run_plan(SidecarKind::Pipelock);
        let (env, held) = agent_env_from(&p, lookup);
        assert!(held.is_empty());
        assert!(env.contains(&format!("GITHUB_TOKEN={GH}")));
    }
}
