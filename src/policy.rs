//! The effective policy of a bottle: what it may reach, which host variables
//! it receives, which sidecar guards it and how much it may consume.
//!
//! This is the one type the three halves share. `lock` computes it from the
//! manifest and stores it in the lockfile and, canonically serialized, in the
//! image config under [`POLICY_LABEL`], so the image digest covers it. `run`
//! reads it back from the image (trusting nothing but the digest) and turns it
//! into a run plan; the egress module turns it into the sidecar config.
//!
//! Invariants (checked by [`Policy::validate`]): hosts are normalized patterns
//! (see `host`), sorted and unique; env names are valid and unique; limits
//! are positive.

use serde::{Deserialize, Serialize};

use crate::host::{HostError, Pattern};

/// Image config label that carries the canonical JSON of the policy.
pub const POLICY_LABEL: &str = "dev.bottle.policy";

/// Version of the policy document inside the image.
pub const POLICY_SCHEMA: u32 = 1;

/// Hosts Claude Code itself needs to sign in and work, merged into every
/// allowlist unless the manifest says `"egress": {"defaults": false}`.
/// Telemetry, error reporting and the auto-updater are switched off in the
/// image, so their hosts are deliberately absent. The README lists each host
/// with the reason; keep the two in step.
pub const DEFAULT_ALLOW: &[&str] = &[
    // The Messages API: every model request.
    "api.anthropic.com",
    // Account sign-in for Pro/Max subscriptions.
    "claude.ai",
    // Sign-in redirects and documentation fetches.
    "claude.com",
    // Built-in documentation lookups.
    "code.claude.com",
    // OAuth token exchange and refresh (CLAUDE_CODE_OAUTH_TOKEN).
    "platform.claude.com",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub schema: u32,
    pub agent: String,
    pub egress: Egress,
    /// Host environment variable names forwarded at run time (values never stored).
    pub env: Vec<String>,
    pub sidecar: Sidecar,
    pub limits: Limits,
    /// `env` names bound to hosts: the builtin sidecar puts the value in
    /// `header` of requests to `hosts` (names and hosts only, never values).
    /// Absent from the label when empty, so older policies are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretBinding>,
}

/// One secret's binding (see README, "Secrets").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBinding {
    pub env: String,
    /// Normalized host patterns, sorted.
    pub hosts: Vec<String>,
    /// `bearer`, `basic` or a header name (lowercase).
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Patterns reachable on 443 (and 80 for plain `http://`).
    pub allow: Vec<String>,
    /// Hosts reachable on 22 through the sidecar.
    pub ssh: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarKind {
    Pipelock,
    Builtin,
}

impl SidecarKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarKind::Pipelock => "pipelock",
            SidecarKind::Builtin => "builtin",
        }
    }
}

impl std::str::FromStr for SidecarKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pipelock" => Ok(SidecarKind::Pipelock),
            "builtin" => Ok(SidecarKind::Builtin),
            other => Err(format!(
                "unknown sidecar `{other}`; expected `pipelock` or `builtin`"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub kind: SidecarKind,
    /// For `pipelock`: the upstream image pinned by digest (`repo@sha256:…`).
    /// For `builtin`: absent; the runner builds the image from its own binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_mib: u64,
    /// CPU quota in thousandths of a CPU (1000 = one CPU); an integer so the
    /// canonical JSON never depends on float formatting.
    pub cpu_millis: u64,
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 4096,
            cpu_millis: 2000,
            pids: 512,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "image has no `{POLICY_LABEL}` label: it was not built by `bottle lock`; lock the agent with `bottle lock <agent>` and run the reference it prints"
    )]
    Missing,
    #[error("policy label is not valid JSON for schema {POLICY_SCHEMA}: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("policy schema {0} is not supported (this bottle understands {POLICY_SCHEMA})")]
    Schema(u32),
    #[error("policy host `{host}` {source}")]
    Host { host: String, source: HostError },
    #[error("policy is not canonical: {0}")]
    NotCanonical(&'static str),
    #[error("policy env name `{0}` is not a valid variable name")]
    EnvName(String),
    #[error("policy limit `{0}` must be positive")]
    Limit(&'static str),
}

impl crate::error::Classify for PolicyError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::BadInput
    }
}

impl Policy {
    /// Canonical JSON (struct field order is fixed; lists are sorted by
    /// construction): the exact bytes stored in the image label.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("policy serializes")
    }

    /// Parse and validate the label value read from an image config.
    pub fn from_label(value: Option<&str>) -> Result<Policy, PolicyError> {
        let value = value.ok_or(PolicyError::Missing)?;
        let policy: Policy = serde_json::from_str(value)?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.schema != POLICY_SCHEMA {
            return Err(PolicyError::Schema(self.schema));
        }
        for list in [&self.egress.allow, &self.egress.ssh] {
            for h in list {
                let p = Pattern::parse(h).map_err(|source| PolicyError::Host {
                    host: h.clone(),
                    source,
                })?;
                if p.to_string() != *h {
                    return Err(PolicyError::NotCanonical("host not normalized"));
                }
            }
            if !is_sorted_unique(list) {
                return Err(PolicyError::NotCanonical("hosts not sorted and unique"));
            }
        }
        for name in &self.env {
            if !is_env_name(name) {
                return Err(PolicyError::EnvName(name.clone()));
            }
        }
        if !is_sorted_unique(&self.env) {
            return Err(PolicyError::NotCanonical("env names not sorted and unique"));
        }
        for b in &self.secrets {
            if !self.env.contains(&b.env) {
                return Err(PolicyError::NotCanonical(
                    "secret binding names an env not forwarded",
                ));
            }
            for h in &b.hosts {
                Pattern::parse(h).map_err(|source| PolicyError::Host {
                    host: h.clone(),
                    source,
                })?;
            }
        }
        if self.limits.memory_mib == 0 {
            return Err(PolicyError::Limit("memory_mib"));
        }
        if self.limits.cpu_millis == 0 {
            return Err(PolicyError::Limit("cpu_millis"));
        }
        if self.limits.pids == 0 {
            return Err(PolicyError::Limit("pids"));
        }
        Ok(())
    }

    /// Parsed allowlist patterns (the policy is validated, so this cannot fail
    /// on a policy that came through [`Policy::from_label`] or the lock).
    pub fn allow_patterns(&self) -> Vec<Pattern> {
        self.egress
            .allow
            .iter()
            .filter_map(|h| Pattern::parse(h).ok())
            .collect()
    }
}

fn is_sorted_unique(v: &[String]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// POSIX-portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Policy {
        Policy {
            schema: 1,
            agent: "hello".into(),
            egress: Egress {
                allow: vec!["*.example.com".into(), "api.anthropic.com".into()],
                ssh: vec!["github.com".into()],
            },
            env: vec!["GITHUB_TOKEN".into()],
            sidecar: Sidecar {
                kind: SidecarKind::Builtin,
                image: None,
            },
            limits: Limits::default(),
            secrets: vec![],
        }
    }

    #[test]
    fn label_round_trips() {
        let p = sample();
        let json = p.to_canonical_json();
        assert_eq!(Policy::from_label(Some(&json)).unwrap(), p);
    }

    #[test]
    fn rejects_missing_unknown_and_uncanonical() {
        assert!(matches!(
            Policy::from_label(None),
            Err(PolicyError::Missing)
        ));
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["extra"] = true.into();
        assert!(Policy::from_label(Some(&v.to_string())).is_err());
        let mut p = sample();
        p.egress.allow.reverse();
        assert!(p.validate().is_err());
        let mut p = sample();
        p.egress.allow = vec!["EXAMPLE.com".into()];
        assert!(p.validate().is_err());
        let mut p = sample();
        p.env = vec!["1BAD".into()];
        assert!(p.validate().is_err());
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("GITHUB_TOKEN"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name("A=B"));
    }
}
