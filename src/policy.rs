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
//! (see `host`), sorted and unique; env names are valid and unique; the
//! agent name is one a manifest could have; limits are within
//! [`Limits::check`]'s bounds; a sidecar image is pinned by digest.

use serde::{Deserialize, Serialize};

use crate::host::Pattern;

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
    /// Size of each writable filesystem of the agent (its home and `/tmp`,
    /// memory-backed, so they also count against `memory_mib`). Omitted from
    /// the label when it is [`DEFAULT_DISK_MIB`]: images locked before the
    /// field existed keep their digest and mean the same, and schema 1 fixes
    /// that default for good.
    #[serde(
        default = "default_disk_mib",
        skip_serializing_if = "is_default_disk_mib"
    )]
    pub disk_mib: u64,
}

/// `limits.disk` when the manifest names none (part of policy schema 1:
/// changing it would change what existing labels mean).
pub const DEFAULT_DISK_MIB: u64 = 1024;

fn default_disk_mib() -> u64 {
    DEFAULT_DISK_MIB
}

fn is_default_disk_mib(v: &u64) -> bool {
    *v == DEFAULT_DISK_MIB
}

/// Largest memory or disk size a policy may name (1 PiB), so that sizes in
/// bytes always fit the engine's signed 64-bit fields.
pub const MAX_SIZE_MIB: u64 = 1 << 30;
/// Largest CPU quota (1,000 CPUs).
pub const MAX_CPU_MILLIS: u64 = 1_000_000;
/// Largest process limit (the kernel's own ceiling for pid_max).
pub const MAX_PIDS: u64 = 1 << 22;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 4096,
            cpu_millis: 2000,
            pids: 512,
            disk_mib: DEFAULT_DISK_MIB,
        }
    }
}

impl Limits {
    /// The bounds a manifest and an image label must both meet: `Err` names
    /// the policy field and what is wrong with it. The manifest maps the
    /// policy field back to its own spelling.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let range = |field, v: u64, max: u64, what: &str| {
            if v == 0 || v > max {
                Err((field, format!("{v} is not a {what} between 1 and {max}")))
            } else {
                Ok(())
            }
        };
        range("memory_mib", self.memory_mib, MAX_SIZE_MIB, "size in MiB")?;
        range(
            "cpu_millis",
            self.cpu_millis,
            MAX_CPU_MILLIS,
            "CPU quota in thousandths",
        )?;
        range("pids", self.pids, MAX_PIDS, "process count")?;
        range("disk_mib", self.disk_mib, MAX_SIZE_MIB, "size in MiB")
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
    /// A field breaks the rule the manifest enforces for it.
    #[error("policy field `{field}`: {problem}")]
    Field { field: String, problem: String },
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

    /// Every field against the rules a manifest is held to (the same
    /// validators: `manifest::is_agent_name`, `host::Pattern`, [`is_env_name`],
    /// [`Limits::check`], the pinned-reference rule), since a label read from
    /// an image is untrusted input that ends up in engine object names,
    /// container environments and the sidecar's config.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let field = |field: String, problem: String| PolicyError::Field { field, problem };
        if self.schema != POLICY_SCHEMA {
            return Err(PolicyError::Schema(self.schema));
        }
        if !crate::manifest::is_agent_name(&self.agent) {
            return Err(field(
                "agent".into(),
                format!(
                    "`{}` is not a valid agent name (lowercase letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most 64)",
                    self.agent.escape_debug()
                ),
            ));
        }
        for (name, list) in [
            ("egress.allow", &self.egress.allow),
            ("egress.ssh", &self.egress.ssh),
        ] {
            for (i, h) in list.iter().enumerate() {
                let at = format!("{name}[{i}]");
                let p = Pattern::parse(h)
                    .map_err(|e| field(at.clone(), format!("`{}` {e}", h.escape_debug())))?;
                if p.to_string() != *h {
                    return Err(field(
                        at,
                        format!("`{}` is not normalized (`{p}`)", h.escape_debug()),
                    ));
                }
            }
            if !is_sorted_unique(list) {
                return Err(field(name.into(), "hosts are not sorted and unique".into()));
            }
        }
        for (i, name) in self.env.iter().enumerate() {
            if !is_env_name(name) {
                return Err(field(
                    format!("env[{i}]"),
                    format!(
                        "`{}` is not a valid environment variable name",
                        name.escape_debug()
                    ),
                ));
            }
        }
        if !is_sorted_unique(&self.env) {
            return Err(field(
                "env".into(),
                "names are not sorted and unique".into(),
            ));
        }
        self.limits
            .check()
            .map_err(|(f, problem)| field(format!("limits.{f}"), problem))?;
        if let Some(image) = &self.sidecar.image {
            let pinned = image
                .split_once('@')
                .is_some_and(|(_, d)| crate::reference::is_digest(d));
            if !pinned || crate::manifest::check_reference(image).is_err() {
                return Err(field(
                    "sidecar.image".into(),
                    format!(
                        "`{}` is not an image pinned by digest (<registry>/<repo>@sha256:<64 hex>)",
                        image.escape_debug()
                    ),
                ));
            }
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

    /// A label is untrusted input: every field is held to the manifest's
    /// rules, and the error names the field.
    #[test]
    fn hostile_label_fields_are_refused_by_name() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("agent", Box::new(|v| v["agent"] = "../../x Y".into())),
            ("agent", Box::new(|v| v["agent"] = "".into())),
            (
                "egress.allow[0]",
                Box::new(|v| v["egress"]["allow"][0] = "a b/../c".into()),
            ),
            (
                "egress.ssh[0]",
                Box::new(|v| v["egress"]["ssh"][0] = "10.0.0.1".into()),
            ),
            ("env[0]", Box::new(|v| v["env"][0] = "A=B".into())),
            (
                "limits.memory_mib",
                Box::new(|v| v["limits"]["memory_mib"] = 0.into()),
            ),
            (
                "limits.memory_mib",
                Box::new(|v| v["limits"]["memory_mib"] = u64::MAX.into()),
            ),
            (
                "limits.cpu_millis",
                Box::new(|v| v["limits"]["cpu_millis"] = u64::MAX.into()),
            ),
            (
                "limits.pids",
                Box::new(|v| v["limits"]["pids"] = u64::MAX.into()),
            ),
            (
                "limits.disk_mib",
                Box::new(|v| v["limits"]["disk_mib"] = 0.into()),
            ),
            (
                "sidecar.image",
                Box::new(|v| {
                    v["sidecar"] = serde_json::json!({"kind": "pipelock", "image": "evil/x:latest"})
                }),
            ),
        ];
        for (field, edit) in cases {
            let mut v = serde_json::to_value(sample()).unwrap();
            edit(&mut v);
            let e = Policy::from_label(Some(&v.to_string())).unwrap_err();
            assert!(
                matches!(&e, PolicyError::Field { field: f, .. } if f == field),
                "{field}: {e}"
            );
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
        // A label without `disk_mib` (locked before it existed) means the default.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["limits"].as_object_mut().unwrap().remove("disk_mib");
        let p = Policy::from_label(Some(&v.to_string())).unwrap();
        assert_eq!(p.limits.disk_mib, DEFAULT_DISK_MIB);
        let pinned = format!("ghcr.io/luckypipewrench/pipelock@sha256:{}", "a".repeat(64));
        let mut p = sample();
        p.sidecar = Sidecar {
            kind: SidecarKind::Pipelock,
            image: Some(pinned),
        };
        p.validate().unwrap();
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
