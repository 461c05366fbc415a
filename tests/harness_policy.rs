//! The test harness never passes a test that tested nothing: a missing
//! engine fails the test on every machine, unless the explicit opt-out
//! `BOTTLE_TEST_SKIP_MISSING=1` is set outside CI, and then the skip is
//! recorded in the log `scripts/test` counts.

mod common;

use std::process::Command;

/// The probe the test below runs in a child process with no engine.
#[tokio::test]
async fn probe_needs_the_engine() {
    if let Some(d) = common::require_docker().await {
        d.ping().await.expect("the engine answers");
    }
}

fn probe(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["probe_needs_the_engine", "--exact", "--nocapture"])
        .env("DOCKER_HOST", "unix:///nonexistent/bottle-test/docker.sock")
        .env_remove("CI")
        .env_remove(common::SKIP_VAR)
        .env_remove("BOTTLE_TEST_SKIP_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn a_missing_engine_fails_the_tests_unless_the_opt_out_is_set() {
    let (ok, text) = probe(&[]);
    assert!(!ok, "a test without an engine passed outside CI: {text}");
    assert!(text.contains("a Docker engine is missing"), "{text}");
    assert!(
        text.contains(common::SKIP_VAR),
        "says how to opt out: {text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    let log_s = log.to_str().unwrap();
    let (ok, text) = probe(&[(common::SKIP_VAR, "1"), ("BOTTLE_TEST_SKIP_LOG", log_s)]);
    assert!(ok, "{text}");
    assert!(text.contains("SKIPPED probe_needs_the_engine"), "{text}");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("a Docker engine is missing"), "{lines}");

    // Under CI the opt-out does not count.
    let (ok, text) = probe(&[(common::SKIP_VAR, "1"), ("CI", "true")]);
    assert!(!ok, "{text}");
}
