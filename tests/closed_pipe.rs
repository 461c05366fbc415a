//! A closed stdout or stderr never makes `bottle` panic (exit 101): `bottle
//! push … 2>&1 | head -1` with the registry down must still end with the
//! command's own exit code (3: the registry is unreachable).

mod common;

use std::process::{Command, Stdio};

/// Run `bottle` with stdout and stderr on one pipe whose reader is already
/// gone, as `… 2>&1 | head -0` (every write fails with EPIPE).
fn run_with_closed_pipe(args: &[&str], cwd: &std::path::Path, cache: &std::path::Path) -> i32 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.args(args)
        .current_dir(cwd)
        .env("BOTTLE_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the bottle binary");
    // Close the read ends before the child writes anything.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait for bottle");
    status.code().unwrap_or(-1)
}

#[test]
fn push_with_the_registry_down_and_a_closed_pipe_exits_3_not_101() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: the registry is down.
    let port = common::free_port();
    let source = format!("127.0.0.1:{port}/team/hello@sha256:{}", "a".repeat(64));
    let to = format!("127.0.0.1:{port}/team/copy");
    let code = run_with_closed_pipe(
        &["push", &source, "--to", &to],
        dir.path(),
        &dir.path().join("cache"),
    );
    assert_eq!(code, 3, "push must fail as unreachable, not panic");

    // The same command with a readable stderr says why (so the code above
    // is the registry's, not an accident).
    let out = common::run_bottle(
        &["push", &source, "--to", &to],
        dir.path(),
        &[(
            "BOTTLE_CACHE_DIR",
            dir.path().join("cache").to_str().unwrap(),
        )],
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
}

#[test]
fn an_error_report_to_a_closed_stderr_keeps_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // No agents named and no --all: bad usage, reported on stderr.
    let code = run_with_closed_pipe(&["check"], dir.path(), &dir.path().join("cache"));
    assert_eq!(code, 2);
}
