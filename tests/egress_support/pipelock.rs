//! A model of pipelock, written from the rules in its source (read with the
//! `fetch` tool, never copied): how its scanner decides on a host
//! (`internal/scanner`: `MatchDomain`, the allowlist, blocklist and
//! subdomain-entropy checks, the per-domain rate limiter) and what its
//! config validation refuses at start (`internal/config/validate.go`,
//! defaults from `normalize.go`). Tests hold bottle's generated config and
//! the builtin proxy to it. It is a model for tests, not pipelock: it covers
//! the hostname path of a CONNECT or absolute-form request, not DLP or body
//! scanning.
#![allow(dead_code)]

use serde_json::Value;

/// pipelock's default per-registrable-domain limit, also what it uses for
/// a configured 0 or less.
pub(crate) const DEFAULT_RATE: i64 = 60;
/// Default `subdomain_entropy_threshold`; a label must exceed it.
pub(crate) const SUBDOMAIN_ENTROPY_THRESHOLD: f64 = 4.0;
/// Labels shorter than this are never entropy-checked.
pub(crate) const SUBDOMAIN_MIN_LABEL: usize = 8;

/// The request rate (per registrable domain and minute) an agent needs
/// without hitting a 429: ten new tunnels a second, sustained.
pub(crate) const AGENT_RATE_NEEDED: i64 = 600;

/// pipelock's host matching: case-insensitive, one trailing dot ignored;
/// `*.x` matches `x` itself and every name ending in `.x`; anything else
/// matches only itself.
pub(crate) fn match_domain(host: &str, pattern: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let pattern = pattern.to_ascii_lowercase();
    let pattern = pattern.strip_suffix('.').unwrap_or(&pattern);
    match pattern.strip_prefix("*.") {
        Some(base) => host == base || host.ends_with(&format!(".{base}")),
        None => host == pattern,
    }
}

/// Shannon entropy in bits per character.
pub(crate) fn shannon_entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn monitoring(config: &Value) -> &Value {
    &config["fetch_proxy"]["monitoring"]
}

/// pipelock's verdict on a host, whatever the port (it has no per-port
/// rule: the CONNECT port and an absolute URI's port are not consulted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    Deny(&'static str),
}

/// The scanner's host checks, in pipelock's order: allowlist (strict mode
/// only), blocklist, then subdomain entropy unless excluded.
pub(crate) fn decide(config: &Value, host: &str) -> Verdict {
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    if config["mode"] == "strict" {
        let allow = strings(&config["api_allowlist"]);
        if !allow.is_empty() && !allow.iter().any(|p| match_domain(&host, p)) {
            return Verdict::Deny("allowlist");
        }
    }
    if strings(&monitoring(config)["blocklist"])
        .iter()
        .any(|p| match_domain(&host, p))
    {
        return Verdict::Deny("blocklist");
    }
    let excluded = strings(&monitoring(config)["subdomain_entropy_exclusions"])
        .iter()
        .any(|p| match_domain(&host, p));
    let labels: Vec<&str> = host.split('.').collect();
    if !excluded && labels.len() >= 3 {
        for label in &labels[..labels.len() - 2] {
            if label.len() >= SUBDOMAIN_MIN_LABEL
                && shannon_entropy(label) > SUBDOMAIN_ENTROPY_THRESHOLD
            {
                return Verdict::Deny("subdomain_entropy");
            }
        }
    }
    Verdict::Allow
}

/// The rate limit pipelock enforces for this config.
pub(crate) fn effective_rate(config: &Value) -> i64 {
    match monitoring(config)["max_requests_per_minute"].as_i64() {
        Some(n) if n > 0 => n,
        _ => DEFAULT_RATE,
    }
}

/// pipelock's rule for `trusted_domains` and `subdomain_entropy_exclusions`
/// entries (lowercased, trailing dot ignored).
fn hostname_pattern_problem(field: &str, raw: &str) -> Option<String> {
    let d = raw.trim().to_ascii_lowercase();
    let d = d.strip_suffix('.').unwrap_or(&d);
    if d.is_empty() {
        return Some(format!("{field}: empty entry"));
    }
    if d.contains("://") || d.contains('/') || d.contains(':') {
        return Some(format!("{field} `{raw}`: a URL or host:port"));
    }
    if d == "*" {
        return Some(format!("{field}: bare wildcard"));
    }
    match d.strip_prefix("*.") {
        Some(rest) if !rest.contains('.') => Some(format!(
            "{field} `{raw}`: wildcard must target a concrete domain"
        )),
        Some(_) => None,
        None if d.contains(['*', '?', '[', ']']) => Some(format!(
            "{field} `{raw}`: only exact hosts and *.x wildcards"
        )),
        None => None,
    }
}

/// Every reason pipelock would refuse to start on this config (after its
/// defaults are applied), given the key list of its schema.
pub(crate) fn start_problems(
    config: &Value,
    schema: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    key_paths(config, "", &mut keys);
    for k in keys.iter().filter(|k| !schema.contains(*k)) {
        out.push(format!("unknown key `{k}`"));
    }
    if !config["version"].is_i64() && !config["version"].is_null() {
        out.push("version is not an integer".into());
    }
    let mode = config["mode"].as_str().unwrap_or("balanced");
    if !["strict", "balanced", "audit", "permissive"].contains(&mode) {
        out.push(format!("invalid mode `{mode}`"));
    }
    if mode == "strict" && strings(&config["api_allowlist"]).is_empty() {
        out.push("strict mode requires at least one domain in api_allowlist".into());
    }
    if strings(&monitoring(config)["blocklist"])
        .iter()
        .any(String::is_empty)
    {
        out.push("empty blocklist entry".into());
    }
    for e in strings(&monitoring(config)["subdomain_entropy_exclusions"]) {
        out.extend(hostname_pattern_problem("subdomain_entropy_exclusions", &e));
    }
    if monitoring(config)["max_requests_per_minute"]
        .as_i64()
        .is_some_and(|n| n < 0)
    {
        out.push("max_requests_per_minute must be >= 0".into());
    }
    for t in strings(&config["trusted_domains"]) {
        out.extend(hostname_pattern_problem("trusted_domains", &t));
    }
    out
}

/// Where pipelock, though it starts, would refuse what the policy allows:
/// a rate limit below an agent's needs, allowlisted names left to the
/// entropy check, or a blocklist entry that a wildcard of the allowlist
/// covers as a strict subdomain (a nested-wildcard apex).
pub(crate) fn policy_problems(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let rate = effective_rate(config);
    if rate < AGENT_RATE_NEEDED {
        out.push(format!(
            "rate limit {rate}/min per domain is below an agent's {AGENT_RATE_NEEDED}/min"
        ));
    }
    let exclusions = strings(&monitoring(config)["subdomain_entropy_exclusions"]);
    let allow = strings(&config["api_allowlist"]);
    for p in &allow {
        if !exclusions.iter().any(|e| covers(e, p)) {
            out.push(format!(
                "`{p}` is not excluded from the subdomain-entropy check"
            ));
        }
    }
    for b in strings(&monitoring(config)["blocklist"]) {
        for p in &allow {
            if let Some(base) = p.strip_prefix("*.") {
                if b.ends_with(&format!(".{base}")) {
                    out.push(format!("blocklist entry `{b}` is a name `{p}` allows"));
                }
            }
        }
    }
    out
}

/// Does exclusion `e` cover every name allowlist pattern `p` matches?
fn covers(e: &str, p: &str) -> bool {
    match (e.strip_prefix("*."), p.strip_prefix("*.")) {
        (Some(eb), Some(pb)) => pb == eb || pb.ends_with(&format!(".{eb}")),
        (Some(eb), None) => p == eb || p.ends_with(&format!(".{eb}")),
        (None, Some(_)) => false,
        (None, None) => e == p,
    }
}

/// Every key path of a JSON document (lists are leaves).
pub(crate) fn key_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            key_paths(child, &path, out);
            out.insert(path);
        }
    }
}

/// The key list in tests/data/pipelock-keys.txt.
pub(crate) fn schema_keys() -> std::collections::BTreeSet<String> {
    include_str!("../data/pipelock-keys.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The release named in tests/data/pipelock-keys.txt (`# release: X`).
pub(crate) fn schema_release() -> Option<String> {
    include_str!("../data/pipelock-keys.txt")
        .lines()
        .find_map(|l| l.strip_prefix("# release: "))
        .map(|s| s.trim().to_string())
}
