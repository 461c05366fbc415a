//! The generated config against pipelock's schema (key list in
//! tests/data/pipelock-keys.txt) and a validator written from pipelock's
//! rules (tests/egress_support/pipelock.rs), the config parser under
//! proptest, and the `bottle proxy` binary: refusing to start, readiness
//! line, SIGTERM.

mod egress_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bottle::egress::config::{self, EgressConfig, PIPELOCK_SECTIONS, RunOptions};
use egress_support::pipelock::{self as model, key_paths, schema_keys};
use egress_support::policy;
use proptest::strategy::Strategy as _;
use serde_json::Value;

fn generated(allow: &[&str], ssh: &[&str], trusted: &[&str]) -> EgressConfig {
    let opts = RunOptions {
        trusted: trusted.iter().map(|s| s.to_string()).collect(),
        ..RunOptions::default()
    };
    EgressConfig::from_policy(&policy(allow, ssh), &opts).unwrap()
}

#[test]
fn generated_keys_are_all_in_pipelocks_schema() {
    let schema = schema_keys();
    // The richest config we generate: every optional section present.
    let c = generated(
        &["*.example.com", "api.anthropic.com"],
        &["github.com"],
        &["internal.test"],
    );
    let v: Value = serde_json::from_str(&c.to_file_text()).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&v, "", &mut keys);
    for k in &keys {
        assert!(
            schema.contains(k),
            "emitted key `{k}` is not in pipelock's schema"
        );
    }
    for must in [
        "version",
        "mode",
        "api_allowlist",
        "forward_proxy.enabled",
        "forward_proxy.sni_verification",
        "forward_proxy.max_tunnel_seconds",
        "forward_proxy.idle_timeout_seconds",
        "trusted_domains",
        "fetch_proxy.monitoring.blocklist",
        "fetch_proxy.monitoring.max_requests_per_minute",
        "fetch_proxy.monitoring.subdomain_entropy_exclusions",
    ] {
        assert!(keys.contains(must), "generated config lacks `{must}`");
    }
    assert_eq!(v["mode"], "strict");
    assert_eq!(v["version"], 1);
    assert_eq!(v["forward_proxy"]["sni_verification"], true);
}

#[test]
fn key_list_is_pinned_to_the_release_lock_pins() {
    assert_eq!(
        model::schema_release().as_deref(),
        Some(bottle::egress::PIPELOCK_TAG),
        "tests/data/pipelock-keys.txt must name the release `lock` pins"
    );
}

/// The policies the issue names: nested wildcards with ssh and trusted
/// hosts, and an empty allowlist.
fn validator_cases() -> Vec<(&'static str, EgressConfig)> {
    vec![
        (
            "nested",
            generated(
                &["*.a.example.com", "*.example.com", "api.test"],
                &["git.test"],
                &["api.test"],
            ),
        ),
        ("empty", generated(&[], &[], &[])),
    ]
}

#[test]
fn generated_configs_pass_pipelocks_validator() {
    let schema = schema_keys();
    for (name, c) in validator_cases() {
        let v: Value = serde_json::from_str(&c.to_file_text()).unwrap();
        assert_eq!(
            model::start_problems(&v, &schema),
            Vec::<String>::new(),
            "{name}"
        );
        assert_eq!(model::policy_problems(&v), Vec::<String>::new(), "{name}");
        assert!(model::effective_rate(&v) >= model::AGENT_RATE_NEEDED);
    }
}

#[test]
fn configs_from_before_the_fix_fail_pipelocks_validator() {
    // What `bottle` generated for the same policies before issue 14 (plus
    // `*.lan` as a trusted host, which it then let through).
    let schema = schema_keys();
    let nested: Value =
        serde_json::from_str(include_str!("data/pipelock-config-before-fix-nested.json")).unwrap();
    let start = model::start_problems(&nested, &schema);
    assert!(
        start.iter().any(|p| p.contains("trusted_domains `*.lan`")),
        "{start:?}"
    );
    let policy = model::policy_problems(&nested).join("\n");
    for needle in [
        "rate limit 60/min",
        "`*.example.com` is not excluded",
        "blocklist entry `a.example.com` is a name `*.example.com` allows",
    ] {
        assert!(policy.contains(needle), "{needle}: {policy}");
    }
    let empty: Value =
        serde_json::from_str(include_str!("data/pipelock-config-before-fix-empty.json")).unwrap();
    let policy = model::policy_problems(&empty).join("\n");
    assert!(policy.contains("rate limit 60/min"), "{policy}");
    // The same policies now generate configs without those problems, and
    // `*.lan` is refused before a config exists.
    let err = EgressConfig::from_policy(
        &policy_of(&["api.test"]),
        &RunOptions {
            trusted: vec!["*.lan".into()],
            ..RunOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("single label"), "{err}");
}

fn policy_of(allow: &[&str]) -> bottle::policy::Policy {
    policy(allow, &[])
}

#[test]
fn proxy_section_list_is_pipelocks_top_level() {
    let schema = schema_keys();
    let top: BTreeSet<&str> = schema
        .iter()
        .filter(|k| !k.contains('.'))
        .map(String::as_str)
        .collect();
    let ours: BTreeSet<&str> = PIPELOCK_SECTIONS.iter().copied().collect();
    assert_eq!(top, ours);
}

#[test]
fn generated_config_round_trips_and_is_hostnames_only() {
    let c = generated(&["a.example", "*.b.example"], &["git.example"], &[]);
    let text = c.to_file_text();
    assert_eq!(config::parse(&text, "t").unwrap(), c);
    // JSON is YAML: a flow mapping; keep it plain ASCII, no tabs, no anchors.
    assert!(text.is_ascii() && !text.contains('\t') && !text.contains('&'));
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut strings = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut strings);
    for s in strings {
        assert!(
            s == "strict" || bottle::host::Pattern::parse(&s).is_ok(),
            "`{s}` is neither the mode nor a hostname pattern"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn config_parser_never_panics_on_text(s in "\\PC{0,200}") {
        let _ = config::parse(&s, "fuzz");
    }

    #[test]
    fn config_parser_never_panics_on_mutated_configs(
        key in proptest::sample::select(PIPELOCK_SECTIONS.to_vec()),
        val in proptest::prop_oneof![
            proptest::strategy::Just(Value::Null),
            proptest::bool::ANY.prop_map(Value::Bool),
            proptest::num::i64::ANY.prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            proptest::collection::vec("\\PC{0,12}", 0..4).prop_map(Value::from),
            proptest::bool::ANY.prop_map(|b| serde_json::json!({"enabled": b})),
        ],
    ) {
        let base = generated(&["a.example"], &[], &[]).to_file_text();
        let mut v: Value = serde_json::from_str(&base).unwrap();
        v[key] = val;
        if let Ok(c) = config::parse(&v.to_string(), "fuzz") {
            // Whatever is accepted stays strict and forward-proxy-only.
            proptest::prop_assert_eq!(c.mode.as_str(), "strict");
            proptest::prop_assert!(c.forward_proxy.enabled);
            proptest::prop_assert!(!c.api_allowlist.is_empty());
        }
    }
}

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn binary_refuses_to_start_on_unimplemented_section() {
    let base: Value =
        serde_json::from_str(&generated(&["a.example"], &[], &[]).to_file_text()).unwrap();
    for (key, val, needle) in [
        (
            "tls_interception",
            serde_json::json!({"enabled": true}),
            "tls_interception",
        ),
        ("dlp", serde_json::json!({"scan_env": true}), "dlp"),
        (
            "websocket_proxy",
            serde_json::json!({"enabled": true}),
            "websocket_proxy",
        ),
        ("no_such_section", serde_json::json!({}), "no_such_section"),
        ("mode", Value::from("balanced"), "mode"),
    ] {
        let mut v = base.clone();
        v[key] = val;
        let f = write_temp(&v.to_string());
        let out = Command::new(env!("CARGO_BIN_EXE_bottle"))
            .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
            .arg(f.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{key}: stderr does not name it: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{key}: nothing on stdout before refusing"
        );
    }
}

#[test]
fn binary_prints_readiness_refuses_and_stops_on_sigterm() {
    let f = write_temp(&generated(&["a.example"], &[], &[]).to_file_text());
    let mut child = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
        .arg(f.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let guard = Kill(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready");
    let addr: std::net::SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();

    // One refused CONNECT (an IP literal: nothing is dialled).
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n")
        .unwrap();
    let mut resp = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 403");
    let d: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(d["verdict"], "deny");
    assert_eq!(d["reason"], "IP literal");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["event"], "shutdown");
    drop(guard);
}
