//! The per-run sidecar config, in pipelock's format.
//!
//! [`EgressConfig::from_policy`] derives it from a bottle's policy plus run
//! options; [`EgressConfig::to_file_text`] serializes it; [`write_config`]
//! writes it atomically with mode 600; [`parse`] reads it back for
//! `bottle proxy`, refusing any section the builtin proxy does not implement.
//!
//! Format: pipelock reads YAML with `yaml.v3` and unknown keys rejected. We
//! emit JSON, which is YAML (a flow mapping), so pipelock reads our file
//! unchanged and we need no YAML crate; the builtin proxy in turn reads JSON
//! only. Every key we emit is in pipelock's schema (the list lives in
//! `tests/data/pipelock-keys.txt` and a test holds us to it).
//!
//! Invariants of a generated config:
//! - `mode: strict` (the only pipelock mode that enforces `api_allowlist`).
//! - `api_allowlist` is never empty: pipelock treats an empty allowlist as
//!   "allow everything", so a bottle with no hosts gets [`DENY_ALL_SENTINEL`],
//!   a name under the reserved `.invalid` TLD that can never resolve.
//! - pipelock's `*.example.com` also matches `example.com`; ours does not
//!   (see `host::Pattern`). To make pipelock exactly as narrow as the policy,
//!   the apex of a wildcard goes into pipelock's blocklist
//!   (`fetch_proxy.monitoring.blocklist`, where a plain entry matches only
//!   itself) when no allowed pattern matches that apex, and only then: with
//!   `*.example.com` and `*.a.example.com`, `a.example.com` stays allowed.
//! - `fetch_proxy.monitoring.max_requests_per_minute` is always written:
//!   pipelock limits each registrable domain to 60 requests a minute when
//!   the key is absent (0 or less also means 60), which an agent on a busy
//!   API exceeds.
//! - `fetch_proxy.monitoring.subdomain_entropy_exclusions` lists every
//!   allowed pattern, so pipelock's random-looking-label check never refuses
//!   a name the policy allows (CDN and bucket names); the builtin proxy has
//!   no such check. The allowlist is the egress boundary in both sidecars.
//! - Every value passes pipelock's own start-up validation
//!   ([`pipelock_pattern_problem`]): a wildcard over a single label (`*.lan`)
//!   is refused here, since pipelock exits on it in `trusted_domains` and
//!   `subdomain_entropy_exclusions`.
//! - Hostnames only: nothing in the file is secret.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EgressError;
use crate::host::{self, Pattern};
use crate::policy::Policy;

/// Allowlist entry used when a policy allows no host at all.
pub const DENY_ALL_SENTINEL: &str = "nothing.invalid";

/// Top-level sections of pipelock's schema (same as the top-level entries
/// of `tests/data/pipelock-keys.txt`). A key outside this list is a typo or a
/// newer pipelock, and `bottle proxy` refuses it.
pub const PIPELOCK_SECTIONS: &[&str] = &[
    "version",
    "mode",
    "enforce",
    "explain_blocks",
    "api_allowlist",
    "suppress",
    "fetch_proxy",
    "forward_proxy",
    "websocket_proxy",
    "dlp",
    "canary_tokens",
    "response_scanning",
    "mcp_input_scanning",
    "mcp_tool_scanning",
    "mcp_data_class_labels",
    "mcp_tool_policy",
    "defer",
    "git_protection",
    "logging",
    "session_profiling",
    "adaptive_enforcement",
    "mcp_session_binding",
    "request_body_scanning",
    "request_policy",
    "kill_switch",
    "health_watchdog",
    "sentry",
    "metrics_listen",
    "containment",
    "emit",
    "tool_chain_detection",
    "mcp_ws_listener",
    "tls_interception",
    "cross_request_detection",
    "reverse_proxy",
    "scan_api",
    "address_protection",
    "seed_phrase_detection",
    "rules",
    "file_sentry",
    "sandbox",
    "flight_recorder",
    "evidence_provenance",
    "dashboard_snapshot",
    "mcp_binary_integrity",
    "mcp_tool_provenance",
    "behavioral_baseline",
    "airlock",
    "browser_shield",
    "media_policy",
    "a2a_scanning",
    "taint",
    "mediation_envelope",
    "redaction",
    "learn",
    "guard",
    "learn_lock",
    "conductor",
    "agents",
    "default_agent_identity",
    "bind_default_agent_identity",
    "license_key",
    "license_file",
    "license_crl_file",
    "license_intermediate_file",
    "license_require_intermediate",
    "license_crl_max_age",
    "license_public_key",
    "internal",
    "trusted_domains",
    "ssrf",
    "dns",
];

/// The subset of pipelock's config that bottle writes and `bottle proxy` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    pub version: u32,
    pub mode: String,
    pub api_allowlist: Vec<String>,
    /// Hosts exempt from the internal-address check (pipelock's SSRF
    /// exemption); for upstreams the operator runs on a private network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_domains: Vec<String>,
    pub forward_proxy: ForwardProxy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_proxy: Option<FetchProxy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardProxy {
    pub enabled: bool,
    pub max_tunnel_seconds: u64,
    pub idle_timeout_seconds: u64,
    #[serde(default = "default_true")]
    pub sni_verification: bool,
    /// Present in pipelock's schema; the builtin proxy accepts it only empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_websocket_hosts: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// Pipelock's fetch-proxy section: bottle uses only its `monitoring`
/// settings, which pipelock applies to every request path (forward proxy
/// included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchProxy {
    pub monitoring: Monitoring,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Names refused outright (pipelock's matching: a plain entry matches
    /// only itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklist: Vec<String>,
    /// pipelock's per-registrable-domain limit (sliding minute; 0 or less
    /// means 60 to pipelock). Signed because pipelock's field is: a negative
    /// value must reach [`validate`] to be refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_minute: Option<i64>,
    /// Patterns exempt from pipelock's high-entropy-subdomain check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subdomain_entropy_exclusions: Vec<String>,
}

/// The per-registrable-domain request limit bottle writes for pipelock:
/// about 170 new tunnels or plain-HTTP requests a second to one domain,
/// far above what an agent opens (clients keep connections alive) yet
/// still a bound. pipelock keeps one timestamp per request in the window,
/// so this also bounds its memory at a few hundred KiB per domain.
pub const MAX_REQUESTS_PER_MINUTE: i64 = 10_000;

/// Per-run settings that are not part of the image's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Hard cap on one tunnel's lifetime.
    pub max_tunnel_seconds: u64,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Hostname patterns exempt from the internal-address check.
    pub trusted: Vec<String>,
    /// pipelock's per-registrable-domain request limit (per minute).
    pub max_requests_per_minute: i64,
}

impl Default for RunOptions {
    fn default() -> Self {
        // Agents hold long streaming responses open; an hour bounds a tunnel
        // without cutting a normal session's requests.
        RunOptions {
            max_tunnel_seconds: 3600,
            idle_timeout_seconds: 300,
            trusted: Vec::new(),
            max_requests_per_minute: MAX_REQUESTS_PER_MINUTE,
        }
    }
}

impl EgressConfig {
    /// The config for one run of a bottle with this policy.
    pub fn from_policy(policy: &Policy, opts: &RunOptions) -> Result<EgressConfig, EgressError> {
        let mut patterns = BTreeSet::new();
        for h in policy.egress.allow.iter().chain(policy.egress.ssh.iter()) {
            let p = Pattern::parse(h)
                .map_err(|e| EgressError::Policy(format!("egress host `{h}` {e}")))?;
            if let Some(problem) = pipelock_pattern_problem(&p) {
                return Err(EgressError::Policy(format!("egress host `{h}` {problem}")));
            }
            patterns.insert(p);
        }
        let mut allow = host::canonical_list(&patterns);
        let blocklist = apex_blocklist(&patterns);
        if allow.is_empty() {
            allow.push(DENY_ALL_SENTINEL.to_string());
        }
        // Every allowlist entry is exempt from the entropy check: the
        // allowlist is the boundary, and pipelock checks entropy only on names
        // that already passed it.
        let subdomain_entropy_exclusions = allow.clone();
        let mut trusted = BTreeSet::new();
        for t in &opts.trusted {
            let p = Pattern::parse(t)
                .map_err(|e| EgressError::Policy(format!("trusted host `{t}` {e}")))?;
            if let Some(problem) = pipelock_pattern_problem(&p) {
                return Err(EgressError::Policy(format!("trusted host `{t}` {problem}")));
            }
            trusted.insert(p);
        }
        if opts.max_tunnel_seconds == 0 || opts.idle_timeout_seconds == 0 {
            return Err(EgressError::Policy(
                "tunnel lifetime and idle timeout must be positive".into(),
            ));
        }
        if opts.max_requests_per_minute <= 0 {
            // pipelock would silently read it as 60.
            return Err(EgressError::Policy(
                "max_requests_per_minute must be positive".into(),
            ));
        }
        Ok(EgressConfig {
            version: 1,
            mode: "strict".into(),
            api_allowlist: allow,
            trusted_domains: host::canonical_list(&trusted),
            forward_proxy: ForwardProxy {
                enabled: true,
                max_tunnel_seconds: opts.max_tunnel_seconds,
                idle_timeout_seconds: opts.idle_timeout_seconds,
                sni_verification: true,
                redirect_websocket_hosts: Vec::new(),
            },
            fetch_proxy: Some(FetchProxy {
                monitoring: Monitoring {
                    blocklist,
                    max_requests_per_minute: Some(opts.max_requests_per_minute),
                    subdomain_entropy_exclusions,
                },
            }),
        })
    }

    /// The file's bytes: pretty JSON (valid YAML), newline-terminated.
    pub fn to_file_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("config serializes");
        s.push('\n');
        s
    }
}

/// The apexes pipelock must refuse: pipelock's `*.x` also matches `x`,
/// bottle's does not. An apex goes on the list only when no allowed pattern
/// (in bottle's matching) covers it, so a nested wildcard (`*.a.x` beside
/// `*.x`) never blocks a name the policy allows.
fn apex_blocklist(patterns: &BTreeSet<Pattern>) -> Vec<String> {
    let mut out: Vec<String> = patterns
        .iter()
        .filter_map(|p| match p {
            Pattern::Subdomains(apex) if !patterns.iter().any(|q| q.matches(apex)) => {
                Some(apex.clone())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why pipelock would refuse to start with this pattern in a list it
/// validates (`trusted_domains`, `subdomain_entropy_exclusions`): its rule
/// is that a wildcard must cover a concrete domain, i.e. at least two labels
/// after `*.` (`*.lan` and `*.com` are refused). Every other form bottle
/// accepts (lowercase LDH labels, no port, no URL) already passes.
pub fn pipelock_pattern_problem(p: &Pattern) -> Option<&'static str> {
    match p {
        Pattern::Subdomains(suffix) if !suffix.contains('.') => Some(
            "is a wildcard over a single label; pipelock (the default sidecar) refuses to start \
with one, so list the hosts themselves (`a.lan`) or use a suffix of two labels or more (`*.corp.lan`)",
        ),
        _ => None,
    }
}

/// Write the config atomically (temp file in the same directory, then
/// rename) with mode 600, so only the sidecar's user can read it.
pub fn write_config(path: &Path, config: &EgressConfig) -> Result<(), EgressError> {
    crate::fsutil::write_atomic(path, config.to_file_text().as_bytes(), 0o600).map_err(|e| {
        EgressError::Write {
            path: path.display().to_string(),
            source: e.source,
        }
    })
}

/// Read and [`parse`] a config file.
pub fn read_config(path: &Path) -> Result<EgressConfig, EgressError> {
    let text = std::fs::read_to_string(path).map_err(|source| EgressError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parse a config for the builtin proxy. Accepts the subset bottle writes;
/// refuses (naming the section) any pipelock section that is present and not
/// explicitly disabled, every key outside pipelock's schema, and every value
/// that would make the builtin proxy weaker than the config asks.
pub fn parse(text: &str, path: &str) -> Result<EgressConfig, EgressError> {
    let bad = |msg: String| EgressError::Config {
        path: path.to_string(),
        msg,
    };
    let unimplemented = |section: &str| EgressError::Unimplemented {
        path: path.to_string(),
        section: section.to_string(),
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not the JSON form of a pipelock config ({e}); `bottle proxy` reads the JSON that \
`bottle` generates, not hand-written YAML"
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(bad("top level must be a mapping".into()));
    };
    let mut subset = serde_json::Map::new();
    for (key, val) in map {
        if !PIPELOCK_SECTIONS.contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown section `{key}` (not in pipelock's schema)"
            )));
        }
        match key.as_str() {
            "version" | "mode" | "api_allowlist" | "trusted_domains" | "forward_proxy"
            | "fetch_proxy" => {
                subset.insert(key, val);
            }
            // `enforce: true` is the default; `false` (log-only) is weaker.
            "enforce" => {
                if val != Value::Bool(true) {
                    return Err(unimplemented("enforce: false"));
                }
            }
            // Lists that would widen or narrow the SSRF rules: accepted empty only.
            "internal" | "suppress" => {
                if !is_empty_value(&val) {
                    return Err(unimplemented(&key));
                }
            }
            "ssrf" => {
                if !is_empty_value(&val) {
                    return Err(unimplemented("ssrf.ip_allowlist"));
                }
            }
            _ => {
                if !is_disabled_section(&val) {
                    return Err(unimplemented(&key));
                }
            }
        }
    }
    let config: EgressConfig = serde_json::from_value(Value::Object(subset)).map_err(|e| {
        bad(format!(
            "{e} (bottle proxy implements only the keys bottle writes)"
        ))
    })?;
    validate(&config).map_err(bad)?;
    Ok(config)
}

/// An absent-equivalent value: null, false, empty list/string, or a mapping
/// whose values are all absent-equivalent.
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_empty_value),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// A section that is off: empty, or a mapping with `enabled: false`.
fn is_disabled_section(v: &Value) -> bool {
    if is_empty_value(v) {
        return true;
    }
    matches!(v, Value::Object(m) if m.get("enabled") == Some(&Value::Bool(false)))
}

fn validate(c: &EgressConfig) -> Result<(), String> {
    if c.version != 1 {
        return Err(format!(
            "version {} is not supported (expected 1)",
            c.version
        ));
    }
    if c.mode != "strict" {
        return Err(format!(
            "mode `{}`: `bottle proxy` implements only `strict` (the only mode that enforces api_allowlist)",
            c.mode
        ));
    }
    if !c.forward_proxy.enabled {
        return Err(
            "forward_proxy.enabled is false: the builtin proxy is only a forward proxy".into(),
        );
    }
    if c.forward_proxy.max_tunnel_seconds == 0 || c.forward_proxy.idle_timeout_seconds == 0 {
        return Err(
            "forward_proxy.max_tunnel_seconds and idle_timeout_seconds must be positive".into(),
        );
    }
    if !c.forward_proxy.redirect_websocket_hosts.is_empty() {
        return Err(
            "forward_proxy.redirect_websocket_hosts is not implemented by `bottle proxy`".into(),
        );
    }
    if c.api_allowlist.is_empty() {
        // Pipelock reads an empty allowlist as "allow all"; refuse rather
        // than pick either meaning silently.
        return Err("api_allowlist is empty (pipelock would allow every host)".into());
    }
    for (field, list) in [
        ("api_allowlist", &c.api_allowlist),
        ("trusted_domains", &c.trusted_domains),
    ] {
        for h in list {
            Pattern::parse(h).map_err(|e| format!("{field} entry `{h}` {e}"))?;
        }
    }
    for h in &c.trusted_domains {
        if let Some(problem) = Pattern::parse(h)
            .ok()
            .as_ref()
            .and_then(pipelock_pattern_problem)
        {
            return Err(format!("trusted_domains entry `{h}` {problem}"));
        }
    }
    if let Some(fp) = &c.fetch_proxy {
        validate_monitoring(&fp.monitoring)?;
    }
    Ok(())
}

/// `fetch_proxy.monitoring`, as the builtin proxy reads it. The builtin has
/// no rate limiter and no entropy check: it accepts a rate limit only when
/// it is one no agent reaches (so it is never weaker than the config asks),
/// and exclusions because they only ever relax pipelock's entropy check.
fn validate_monitoring(m: &Monitoring) -> Result<(), String> {
    for h in &m.blocklist {
        Pattern::parse(h)
            .map_err(|e| format!("fetch_proxy.monitoring.blocklist entry `{h}` {e}"))?;
    }
    for h in &m.subdomain_entropy_exclusions {
        let p = Pattern::parse(h).map_err(|e| {
            format!("fetch_proxy.monitoring.subdomain_entropy_exclusions entry `{h}` {e}")
        })?;
        if let Some(problem) = pipelock_pattern_problem(&p) {
            return Err(format!(
                "fetch_proxy.monitoring.subdomain_entropy_exclusions entry `{h}` {problem}"
            ));
        }
    }
    if let Some(n) = m.max_requests_per_minute {
        if n < MAX_REQUESTS_PER_MINUTE {
            return Err(format!(
                "fetch_proxy.monitoring.max_requests_per_minute is {n}: `bottle proxy` does not \
rate-limit, so it accepts only limits no agent reaches (at least {MAX_REQUESTS_PER_MINUTE}, what \
`bottle` writes; pipelock reads 0 or less as 60); use the pipelock sidecar for a lower limit"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Egress, Limits, Sidecar, SidecarKind};

    fn policy(allow: &[&str], ssh: &[&str]) -> Policy {
        Policy {
            schema: 1,
            agent: "hello".into(),
            egress: Egress {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                ssh: ssh.iter().map(|s| s.to_string()).collect(),
            },
            env: vec![],
            sidecar: Sidecar {
                kind: SidecarKind::Builtin,
                image: None,
            },
            limits: Limits::default(),
        }
    }

    #[test]
    fn generated_config_is_strict_and_round_trips() {
        let p = policy(&["*.example.com", "api.anthropic.com"], &["github.com"]);
        let c = EgressConfig::from_policy(&p, &RunOptions::default()).unwrap();
        assert_eq!(c.mode, "strict");
        assert_eq!(c.version, 1);
        assert!(c.forward_proxy.enabled && c.forward_proxy.sni_verification);
        assert_eq!(
            c.api_allowlist,
            vec!["*.example.com", "api.anthropic.com", "github.com"]
        );
        assert_eq!(
            c.fetch_proxy.as_ref().unwrap().monitoring.blocklist,
            vec!["example.com"]
        );
        let text = c.to_file_text();
        assert_eq!(parse(&text, "t").unwrap(), c);
    }

    fn blocklist(c: &EgressConfig) -> &[String] {
        &c.fetch_proxy.as_ref().unwrap().monitoring.blocklist
    }

    #[test]
    fn wildcard_apex_not_blocked_when_apex_allowed() {
        let p = policy(&["*.example.com", "example.com"], &[]);
        let c = EgressConfig::from_policy(&p, &RunOptions::default()).unwrap();
        assert!(blocklist(&c).is_empty());
        assert!(!c.to_file_text().contains("blocklist"));
    }

    #[test]
    fn nested_wildcard_apex_is_not_blocked() {
        // `a.example.com` is allowed by `*.example.com`; only the outer apex
        // (which no pattern allows) goes on pipelock's blocklist.
        let p = policy(&["*.a.example.com", "*.example.com"], &[]);
        let c = EgressConfig::from_policy(&p, &RunOptions::default()).unwrap();
        assert_eq!(blocklist(&c), ["example.com"]);
    }

    #[test]
    fn rate_limit_and_entropy_exclusions_are_written() {
        let p = policy(&["*.example.com", "api.test"], &["git.test"]);
        let c = EgressConfig::from_policy(&p, &RunOptions::default()).unwrap();
        let m = &c.fetch_proxy.as_ref().unwrap().monitoring;
        assert_eq!(m.max_requests_per_minute, Some(MAX_REQUESTS_PER_MINUTE));
        assert_eq!(
            m.subdomain_entropy_exclusions,
            ["*.example.com", "api.test", "git.test"]
        );
        let zero = RunOptions {
            max_requests_per_minute: 0,
            ..RunOptions::default()
        };
        assert!(EgressConfig::from_policy(&p, &zero).is_err());
    }

    #[test]
    fn single_label_wildcards_are_refused() {
        let trusted = RunOptions {
            trusted: vec!["*.lan".into()],
            ..RunOptions::default()
        };
        let err = EgressConfig::from_policy(&policy(&["a.test"], &[]), &trusted).unwrap_err();
        assert!(err.to_string().contains("single label"), "{err}");
        let err = EgressConfig::from_policy(&policy(&["*.lan"], &[]), &RunOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("`*.lan`"), "{err}");
        assert!(matches!(err, EgressError::Policy(_)));
        assert!(
            EgressConfig::from_policy(&policy(&["*.corp.lan"], &[]), &RunOptions::default())
                .is_ok()
        );
    }

    #[test]
    fn builtin_accepts_only_a_rate_limit_no_agent_reaches() {
        let base = EgressConfig::from_policy(&policy(&["a.test"], &[]), &RunOptions::default())
            .unwrap()
            .to_file_text();
        let with_rate = |n: i64| {
            let mut v: Value = serde_json::from_str(&base).unwrap();
            v["fetch_proxy"]["monitoring"]["max_requests_per_minute"] = n.into();
            parse(&v.to_string(), "t")
        };
        assert!(with_rate(MAX_REQUESTS_PER_MINUTE).is_ok());
        for low in [0, -1, 60, MAX_REQUESTS_PER_MINUTE - 1] {
            let err = with_rate(low).unwrap_err().to_string();
            assert!(err.contains("does not rate-limit"), "{low}: {err}");
        }
        let mut v: Value = serde_json::from_str(&base).unwrap();
        v["fetch_proxy"]["monitoring"]["subdomain_entropy_exclusions"] =
            serde_json::json!(["*.lan"]);
        assert!(parse(&v.to_string(), "t").is_err());
        v["trusted_domains"] = serde_json::json!(["*.lan"]);
        v["fetch_proxy"]["monitoring"]["subdomain_entropy_exclusions"] = serde_json::json!([]);
        assert!(parse(&v.to_string(), "t").is_err());
    }

    #[test]
    fn empty_policy_denies_all() {
        let c = EgressConfig::from_policy(&policy(&[], &[]), &RunOptions::default()).unwrap();
        assert_eq!(c.api_allowlist, vec![DENY_ALL_SENTINEL]);
    }

    #[test]
    fn refuses_unknown_and_enabled_sections() {
        let base = EgressConfig::from_policy(&policy(&["a.test"], &[]), &RunOptions::default())
            .unwrap()
            .to_file_text();
        let with = |k: &str, v: Value| {
            let mut m: serde_json::Map<String, Value> = serde_json::from_str(&base).unwrap();
            m.insert(k.into(), v);
            parse(&Value::Object(m).to_string(), "t")
        };
        assert!(matches!(
            with("tls_intercept", serde_json::json!({})),
            Err(EgressError::Config { .. })
        ));
        match with("tls_interception", serde_json::json!({"enabled": true})) {
            Err(EgressError::Unimplemented { section, .. }) => {
                assert_eq!(section, "tls_interception")
            }
            other => panic!("{other:?}"),
        }
        match with("dlp", serde_json::json!({"scan_env": true})) {
            Err(EgressError::Unimplemented { section, .. }) => assert_eq!(section, "dlp"),
            other => panic!("{other:?}"),
        }
        assert!(with("tls_interception", serde_json::json!({"enabled": false})).is_ok());
        assert!(with("mode", "balanced".into()).is_err());
        assert!(with("enforce", false.into()).is_err());
        assert!(with("enforce", true.into()).is_ok());
        assert!(with("api_allowlist", serde_json::json!([])).is_err());
        assert!(with("ssrf", serde_json::json!({"ip_allowlist": ["10.0.0.0/8"]})).is_err());
        let mut m: Value = serde_json::from_str(&base).unwrap();
        m["forward_proxy"]["extra"] = true.into();
        assert!(parse(&m.to_string(), "t").is_err());
    }

    #[test]
    fn write_is_mode_600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.yaml");
        let c =
            EgressConfig::from_policy(&policy(&["a.test"], &[]), &RunOptions::default()).unwrap();
        write_config(&path, &c).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_config(&path).unwrap(), c);
    }
}
