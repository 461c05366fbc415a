//! The harness itself works: a registry comes up and answers `/v2/`, and the
//! `bottle` binary can be run.

mod common;

#[test]
fn registry_starts_answers_and_stops() {
    let Some(reg) = common::Registry::start() else {
        return;
    };
    assert_eq!(reg.get_status("/v2/"), Some(200), "{}", reg.log());
    let port = reg.port;
    drop(reg);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_err(),
        "registry still listening after drop"
    );
}

#[test]
fn bottle_binary_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_bottle(&["--version"], dir.path(), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("bottle "), "{out:?}");
}

#[tokio::test]
async fn engine_answers_with_negotiated_version() {
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let v = docker.version().await.expect("engine version");
    assert!(v.api_version.is_some(), "{v:?}");
}

#[test]
fn bottle_binary_gets_stdin_and_reports_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // An unknown subcommand is a usage error (clap exits 2) whatever stdin holds.
    let out =
        common::run_bottle_stdin(&["no-such-command"], dir.path(), &[], Some(b"not a secret"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no-such-command"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
