//! The runner's view of the egress sidecar: which image, which command, the
//! per-run config text, and how to read its decision log. The config format
//! and the builtin image belong to `egress`; this file only adapts them.

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

/// One denied request from the sidecar's JSON decision log, if `line` is one.
pub fn blocked_host(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let decision = ["decision", "action", "verdict", "result"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))?
        .to_ascii_lowercase();
    if !matches!(
        decision.as_str(),
        "deny" | "denied" | "block" | "blocked" | "refuse" | "refused"
    ) {
        return None;
    }
    Some(
        ["host", "target", "authority", "destination"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .unwrap_or("?")
            .to_string(),
    )
}

/// Does this output line say the proxy is accepting connections?
pub fn is_ready_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("listening") || l.contains("\"ready\"")
}

/// `sidecar blocked 3 requests to 2 hosts: a.com, b.com`.
pub fn blocked_summary(hosts: &[String]) -> Option<String> {
    if hosts.is_empty() {
        return None;
    }
    let mut unique: Vec<&str> = hosts.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    let n = hosts.len();
    let shown: Vec<&str> = unique.iter().take(5).copied().collect();
    let more = if unique.len() > 5 {
        format!(", +{} more", unique.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "sidecar blocked {n} request{} to {} host{}: {}{more}",
        if n == 1 { "" } else { "s" },
        unique.len(),
        if unique.len() == 1 { "" } else { "s" },
        shown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_log() {
        assert_eq!(
            blocked_host(r#"{"decision":"deny","host":"evil.test","port":443}"#),
            Some("evil.test".into())
        );
        assert_eq!(
            blocked_host(r#"{"decision":"allow","host":"ok.test"}"#),
            None
        );
        assert_eq!(blocked_host("listening on 0.0.0.0:8888"), None);
        assert!(is_ready_line("bottle proxy: listening on 0.0.0.0:8888"));
        assert_eq!(
            blocked_summary(&["b.test".into(), "a.test".into(), "b.test".into()]).unwrap(),
            "sidecar blocked 3 requests to 2 hosts: a.test, b.test"
        );
        assert_eq!(blocked_summary(&[]), None);
    }
}
