//! The runner's view of the egress sidecar: which image, which command, the
//! per-run config text, and how to read its decision log. The config format
//! and the builtin image belong to `egress`; this file only adapts them.
//!
//! Invariant: what the runner keeps from the decision log ([`BlockedLog`])
//! is bounded whatever the agent sends: request counts are exact, hosts are
//! capped in number and length and reduced to printable ASCII, so neither
//! the host's memory nor its terminal is the agent's to fill.

use serde_json::Value;

use crate::egress::EgressError;
use crate::egress::config::{EgressConfig, RunOptions};
use crate::plan::RunPlan;
use crate::policy::{Policy, SidecarKind};

/// The sidecar's command line (no secrets: those go over stdin).
pub fn command(plan: &RunPlan) -> Vec<String> {
    match plan.sidecar.kind {
        // The image's entrypoint is `bottle proxy`.
        SidecarKind::Builtin => {
            crate::egress::builtin_cmd(&plan.sidecar.config_path, &plan.sidecar.ssh)
        }
        SidecarKind::Pipelock => crate::egress::pipelock_cmd(&plan.sidecar.config_path),
    }
}

/// The per-run config in pipelock's format (written by `egress`): hostnames
/// only, never secrets.
pub fn config(policy: &Policy, plan: &RunPlan) -> Result<String, EgressError> {
    let opts = RunOptions {
        trusted: plan.sidecar.trusted.clone(),
        ..RunOptions::default()
    };
    Ok(EgressConfig::from_policy(policy, &opts)?.to_file_text())
}

/// The host of one refused request, if `line` is a refusal in either
/// sidecar's JSON decision log:
/// - builtin (`bottle proxy`): `{"event":"decision","verdict":"deny","host":…}`;
/// - pipelock (its audit log, zerolog JSON):
///   `{"event":"blocked","method":"CONNECT","target":"host:443",…}` for a
///   tunnel, `"url":"http://host/…"` for plain HTTP; `ws_blocked` likewise;
///   `sni_mismatch` (a tunnel cut for its ClientHello) names `connect_host`.
///
/// The host comes from the agent's request, so it is cut to a DNS name's
/// length and stripped of anything a terminal would interpret.
pub fn blocked_host(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let refused = match field("event") {
        Some("blocked" | "ws_blocked" | "sni_mismatch") => true,
        _ => ["decision", "action", "verdict", "result"]
            .iter()
            .find_map(|k| field(k))
            .is_some_and(|d| {
                matches!(
                    d.to_ascii_lowercase().as_str(),
                    "deny" | "denied" | "block" | "blocked" | "refuse" | "refused"
                )
            }),
    };
    if !refused {
        return None;
    }
    let host = if let Some(h) = field("host").or_else(|| field("connect_host")) {
        h.to_string()
    } else if let Some(t) = field("target").or_else(|| field("authority")) {
        authority_host(t)
    } else if let Some(u) = field("url") {
        url_host(u)
    } else {
        "?".to_string()
    };
    Some(printable(&host, MAX_HOST_CHARS))
}

/// `host:port` or `[v6]:port` → host.
fn authority_host(a: &str) -> String {
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => a.to_string(),
    }
}

/// `scheme://[userinfo@]host[:port]/…` → host.
fn url_host(u: &str) -> String {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    authority_host(&rest[..end])
}

/// Longest host kept (a DNS name is at most 253 characters).
const MAX_HOST_CHARS: usize = 253;

/// Distinct hosts kept for the summary; requests to further hosts are
/// still counted.
pub const MAX_HOSTS: usize = 256;

/// At most `max` printable ASCII characters (others become `?`), with `…`
/// when cut.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

/// What the sidecar refused during a run, in bounded memory: exact request
/// counts, at most [`MAX_HOSTS`] distinct hosts of at most 253 characters
/// each. An agent can make the sidecar log refusals as fast as it likes, so
/// nothing here grows with the number of refusals.
#[derive(Debug, Default, Clone)]
pub struct BlockedLog {
    requests: u64,
    per_host: std::collections::BTreeMap<String, u64>,
    /// Requests to hosts that arrived after the table was full.
    unlisted_requests: u64,
}

impl BlockedLog {
    /// Count one refused request to `host` (cut to length if it is not yet).
    pub fn record(&mut self, host: &str) {
        self.requests += 1;
        let host = if host.len() > MAX_HOST_CHARS || !host.bytes().all(|b| b.is_ascii_graphic()) {
            printable(host, MAX_HOST_CHARS)
        } else {
            host.to_string()
        };
        let mut host = host;
        host.shrink_to_fit();
        if let Some(n) = self.per_host.get_mut(&host) {
            *n += 1;
        } else if self.per_host.len() < MAX_HOSTS {
            self.per_host.insert(host, 1);
        } else {
            self.unlisted_requests += 1;
        }
    }

    /// Read one line of the sidecar's output: count it when it is a
    /// refusal (see [`blocked_host`]). Returns whether it was one.
    pub fn observe(&mut self, line: &str) -> bool {
        match blocked_host(line) {
            Some(h) => {
                self.record(&h);
                true
            }
            None => false,
        }
    }

    /// Refused requests counted so far (exact).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// An upper bound on the heap this log holds, in bytes: what a test
    /// (and a reader) can hold against the bound.
    pub fn heap_bytes(&self) -> usize {
        // Per entry: the key's bytes plus the map node's share (key String,
        // count, pointers), generously rounded.
        self.per_host.keys().map(|k| k.capacity() + 96).sum()
    }

    /// `sidecar blocked 3 requests to 2 hosts: a.com, b.com`.
    pub fn summary(&self) -> Option<String> {
        if self.requests == 0 {
            return None;
        }
        let n = self.requests;
        let listed = self.per_host.len();
        let hosts = if self.unlisted_requests > 0 {
            format!("more than {listed} hosts")
        } else {
            format!("{listed} host{}", if listed == 1 { "" } else { "s" })
        };
        let shown: Vec<&str> = self.per_host.keys().take(5).map(String::as_str).collect();
        let more = if self.unlisted_requests > 0 {
            ", and others".to_string()
        } else if listed > 5 {
            format!(", +{} more", listed - 5)
        } else {
            String::new()
        };
        Some(format!(
            "sidecar blocked {n} request{} to {hosts}: {}{more}",
            if n == 1 { "" } else { "s" },
            shown.join(", ")
        ))
    }
}

/// Does this output line say the proxy is accepting connections?
pub fn is_ready_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("listening") || l.contains("\"ready\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(hosts: &[&str]) -> Option<String> {
        let mut log = BlockedLog::default();
        for h in hosts {
            log.record(h);
        }
        log.summary()
    }

    #[test]
    fn builtin_decision_log() {
        assert_eq!(
            blocked_host(
                r#"{"time":"2026-11-29T05:00:00.000Z","event":"decision","verdict":"deny","reason":"host not in allowlist","method":"CONNECT","host":"evil.test","port":443}"#
            ),
            Some("evil.test".into())
        );
        assert_eq!(
            blocked_host(r#"{"event":"decision","verdict":"allow","host":"ok.test"}"#),
            None
        );
        assert_eq!(blocked_host("listening on 0.0.0.0:8888"), None);
        assert!(is_ready_line("bottle proxy: listening on 0.0.0.0:8888"));
    }

    #[test]
    fn pipelock_lines_and_hosts() {
        assert_eq!(
            blocked_host(r#"{"event":"ws_blocked","target":"[::1]:8443"}"#),
            Some("::1".into())
        );
        assert_eq!(
            blocked_host(r#"{"event":"blocked","url":"http://u:p@plain.test:8080/x?y#z"}"#),
            Some("plain.test".into())
        );
        // pipelock's own tunnel bookkeeping is not a refusal.
        assert_eq!(
            blocked_host(r#"{"event":"tunnel_open","target":"ok.test:443"}"#),
            None
        );
        // An agent-chosen host cannot smuggle terminal escapes into the summary.
        assert_eq!(
            blocked_host("{\"event\":\"blocked\",\"target\":\"a\\u001b[2Jb.test:443\"}"),
            Some("a?[2Jb.test".into())
        );
    }

    #[test]
    fn summary_counts_exactly() {
        assert_eq!(
            summary(&["b.test", "a.test", "b.test"]).unwrap(),
            "sidecar blocked 3 requests to 2 hosts: a.test, b.test"
        );
        assert_eq!(summary(&[]), None);
        let many: Vec<String> = (0..7).map(|i| format!("h{i}.test")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            summary(&many).unwrap(),
            "sidecar blocked 7 requests to 7 hosts: h0.test, h1.test, h2.test, h3.test, h4.test, +2 more"
        );
    }

    #[test]
    fn host_table_is_capped_and_counts_stay_exact() {
        let mut log = BlockedLog::default();
        for i in 0..(MAX_HOSTS + 10) {
            log.record(&format!("h{i:04}.test"));
        }
        log.record("h0000.test");
        assert_eq!(log.requests(), MAX_HOSTS as u64 + 11);
        let s = log.summary().unwrap();
        assert!(
            s.starts_with(&format!(
                "sidecar blocked {} requests to more than {MAX_HOSTS} hosts: h0000.test,",
                MAX_HOSTS + 11
            )),
            "{s}"
        );
        assert!(s.ends_with(", and others"), "{s}");
        let long = "x".repeat(10_000);
        let mut log = BlockedLog::default();
        log.record(&long);
        assert!(log.heap_bytes() < 1024, "{}", log.heap_bytes());
    }
}
