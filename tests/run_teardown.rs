//! Teardown on every path, against the real engine: zero labeled containers
//! and networks remain after a normal exit, a non-zero exit (code
//! propagated), SIGINT / SIGTERM / SIGHUP to `bottle` mid-run, and a sidecar
//! that fails to start; after SIGKILL, `bottle gc` removes the dead run and
//! leaves a concurrent live one alone; five runs at once do not collide.

mod common;
mod run_common;

use std::time::Duration;

use run_common::{Cleanup, Fixture, fixture, leftovers, sidecar_image, wait_for};

fn cleanup(agent: &str) -> Cleanup {
    Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    }
}

async fn setup(agent: &str) -> Option<(Fixture, String, Cleanup)> {
    let fx = fixture(agent, &["upstream.bottle.test"]).await?;
    let side = sidecar_image(&fx).await;
    Some((fx, side, cleanup(agent)))
}

fn running_agents(l: &[String]) -> usize {
    l.iter()
        .filter(|s| s.starts_with("container") && !s.contains("-sidecar"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn normal_and_non_zero_exits_leave_nothing_and_propagate_the_code() {
    let agent = "tdexit";
    let Some((fx, side, _c)) = setup(agent).await else {
        return;
    };
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ok = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
        &[],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout, "out\n");
    assert!(ok.stderr.contains("err\n"), "{}", ok.stderr);
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
    assert_teardown_order(&fx, agent, since).await;

    let bad = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
        &[],
    );
    assert_eq!(bad.code, 7, "{}", bad.stderr);
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_mid_run_tear_everything_down() {
    let agent = "tdsig";
    let Some((fx, side, _c)) = setup(agent).await else {
        return;
    };
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let mut s = fx.spawn(
            &[
                "run",
                "--yes",
                "--sidecar-image",
                &side,
                agent,
                "--",
                "sleep",
                "60",
            ],
            &[],
        );
        let l = wait_for(&fx.docker, agent, Duration::from_secs(60), |l| {
            running_agents(l) == 1
        })
        .await;
        assert_eq!(
            running_agents(&l),
            1,
            "agent never started: {l:?}\n{}",
            s.stderr()
        );
        s.signal(sig);
        let got = s.wait(Duration::from_secs(30));
        assert_eq!(got, Some(code), "signal {sig}: {}", s.stderr());
        assert_eq!(
            leftovers(&fx.docker, agent).await,
            Vec::<String>::new(),
            "signal {sig}"
        );
        assert!(s.stderr().contains("torn down"), "{}", s.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_that_fails_to_start_leaves_no_network() {
    let agent = "tdside";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    // The agent's busybox image has no `proxy` program: the sidecar cannot start.
    let broken = format!("{}/bottle/{}@{}", fx.reg.localhost(), agent, fx.digest);
    let out = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &broken,
            agent,
            "--",
            "true",
        ],
        &[],
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("sidecar"), "{}", out.stderr);
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // A sidecar that starts and dies at once: the error carries its output.
    let policy = bottle::policy::Policy {
        schema: 1,
        agent: agent.into(),
        egress: bottle::policy::Egress {
            allow: vec![],
            ssh: vec![],
        },
        env: vec![],
        sidecar: bottle::policy::Sidecar {
            kind: bottle::policy::SidecarKind::Builtin,
            image: None,
        },
        limits: bottle::policy::Limits::default(),
    };
    let mut spec = run_common::agent_spec(&policy);
    spec.config.entrypoint = vec![
        "sh".into(),
        "-c".into(),
        "echo sidecar-broken-on-purpose >&2; exit 4".into(),
    ];
    spec.config.cmd = vec![];
    let cache = tempfile::tempdir().unwrap();
    let store = bottle::oci::BlobStore::open(cache.path()).unwrap();
    let image = bottle::oci::build(&spec, &store).unwrap();
    bottle::registry::RegistryClient::new(&fx.reg.host())
        .unwrap()
        .push(
            "bottle/dying-sidecar",
            None,
            &image,
            &store,
            &bottle::progress::Progress::hidden(),
        )
        .await
        .unwrap();
    let dying = format!(
        "{}/bottle/dying-sidecar@{}",
        fx.reg.localhost(),
        image.manifest_digest
    );
    let out = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &dying,
            agent,
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("exited with code 4"), "{}", out.stderr);
    assert!(
        out.stderr.contains("sidecar-broken-on-purpose"),
        "{}",
        out.stderr
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_gc_removes_the_dead_run_and_spares_the_live_one() {
    let agent = "tdgc";
    let Some((fx, side, _c)) = setup(agent).await else {
        return;
    };
    let mut dead = fx.spawn(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sleep",
            "120",
        ],
        &[],
    );
    let l = wait_for(&fx.docker, agent, Duration::from_secs(60), |l| {
        running_agents(l) == 1
    })
    .await;
    assert_eq!(running_agents(&l), 1, "{l:?}");
    let mut live = fx.spawn(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sleep",
            "120",
        ],
        &[],
    );
    let l = wait_for(&fx.docker, agent, Duration::from_secs(60), |l| {
        running_agents(l) == 2
    })
    .await;
    assert_eq!(running_agents(&l), 2, "{l:?}");

    dead.signal(libc::SIGKILL);
    assert_eq!(
        dead.wait(Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    // SIGKILL cannot be caught: the dead run's objects are still there
    // (per run: two containers, two networks, the home volume).
    assert_eq!(
        leftovers(&fx.docker, agent).await.len(),
        2 * 5,
        "{:?}",
        leftovers(&fx.docker, agent).await
    );

    let ps = fx.bottle(&["ps", "--json"], &[]);
    assert_eq!(ps.code, 0, "{}", ps.stderr);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&ps.stdout).unwrap();
    let mine: Vec<&serde_json::Value> = runs.iter().filter(|r| r["agent"] == agent).collect();
    assert_eq!(mine.len(), 2, "{}", ps.stdout);
    let dead_run = mine.iter().find(|r| r["owner_pid"] == dead.pid()).unwrap();
    let live_run = mine.iter().find(|r| r["owner_pid"] == live.pid()).unwrap();
    assert_eq!(dead_run["owner_alive"], false);
    assert_eq!(live_run["owner_alive"], true);

    let dry = fx.bottle(&["gc", "--dry-run", "--json"], &[]);
    let dry_json: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    let would = dry_json["runs"].as_array().unwrap();
    assert!(
        would.iter().any(|r| r["run_id"] == dead_run["run_id"]),
        "{}",
        dry.stdout
    );
    assert!(
        !would.iter().any(|r| r["run_id"] == live_run["run_id"]),
        "{}",
        dry.stdout
    );
    assert_eq!(
        leftovers(&fx.docker, agent).await.len(),
        10,
        "dry run removed something"
    );

    let gc = fx.bottle(&["gc"], &[]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let l = leftovers(&fx.docker, agent).await;
    // The dead run's home volume went with its sidecar.
    assert_eq!(l.len(), 5, "only the live run's objects remain: {l:?}");
    let live_id = live_run["run_id"].as_str().unwrap();
    assert!(l.iter().all(|o| o.contains(live_id)), "{l:?}");
    assert_eq!(running_agents(&l), 1);

    live.signal(libc::SIGTERM);
    assert_eq!(
        live.wait(Duration::from_secs(30)),
        Some(143),
        "{}",
        live.stderr()
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn five_bottles_of_one_agent_at_once() {
    let agent = "tdfive";
    let Some((fx, side, _c)) = setup(agent).await else {
        return;
    };
    let mut runs: Vec<_> = (0..5)
        .map(|i| {
            let cmd = format!("sleep 2; echo done-{i}");
            fx.spawn(
                &[
                    "run",
                    "--yes",
                    "--sidecar-image",
                    &side,
                    agent,
                    "--",
                    "sh",
                    "-c",
                    &cmd,
                ],
                &[],
            )
        })
        .collect();
    for (i, r) in runs.iter_mut().enumerate() {
        assert_eq!(
            r.wait(Duration::from_secs(120)),
            Some(0),
            "run {i}: {}",
            r.stderr()
        );
        assert_eq!(r.stdout(), format!("done-{i}\n"));
    }
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

/// The engine's own event log says: agent destroyed, then sidecar, then
/// the networks.
async fn assert_teardown_order(fx: &Fixture, agent: &str, since: u64) {
    use futures_util::StreamExt;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let mut events = fx
        .docker
        .events(Some(bollard::query_parameters::EventsOptions {
            since: Some(since.to_string()),
            until: Some(until.to_string()),
            filters: None,
        }));
    let prefix = format!("bottle-{agent}-");
    let mut order = Vec::new();
    while let Some(Ok(e)) = events.next().await {
        let action = e.action.unwrap_or_default();
        let name = e
            .actor
            .and_then(|a| a.attributes)
            .and_then(|a| a.get("name").cloned())
            .unwrap_or_default();
        if action == "destroy" && name.starts_with(&prefix) {
            order.push(name);
        }
    }
    let role = |n: &String| {
        if n.ends_with("-sidecar") {
            1
        } else if n.ends_with("-egress") || n.ends_with("-net") {
            2
        } else {
            0
        }
    };
    let roles: Vec<i32> = order.iter().map(role).collect();
    assert_eq!(roles, vec![0, 1, 2, 2], "destroy order: {order:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_is_mounted_read_write_only_when_asked() {
    let agent = "tdwork";
    let Some((fx, side, _c)) = setup(agent).await else {
        return;
    };
    let ws = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // The agent runs as uid 1000; let it write into the test's folder.
        std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(ws.path().join("in.txt"), "from-host\n").unwrap();
    let ws_arg = ws.path().display().to_string();
    let with = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            "--workspace",
            &ws_arg,
            agent,
            "--",
            "sh",
            "-c",
            "pwd; cat /workspace/in.txt; echo from-bottle > /workspace/out.txt",
        ],
        &[],
    );
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert_eq!(with.stdout, "/workspace\nfrom-host\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        "from-bottle\n"
    );

    let without = fx.bottle(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sh",
            "-c",
            "ls /workspace 2>&1 || echo no-workspace",
        ],
        &[],
    );
    assert_eq!(without.code, 0, "{}", without.stderr);
    assert!(
        without.stdout.contains("no-workspace"),
        "{}",
        without.stdout
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_without_a_policy_is_refused_before_anything_starts() {
    let agent = "tdnopolicy";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    let cache = tempfile::tempdir().unwrap();
    let store = bottle::oci::BlobStore::open(cache.path()).unwrap();
    let image = bottle::oci::build(&common::busybox_spec(), &store).unwrap();
    bottle::registry::RegistryClient::new(&fx.reg.host())
        .unwrap()
        .push(
            "plain/busybox",
            None,
            &image,
            &store,
            &bottle::progress::Progress::hidden(),
        )
        .await
        .unwrap();
    let reference = format!(
        "{}/plain/busybox@{}",
        fx.reg.localhost(),
        image.manifest_digest
    );
    let out = fx.bottle(&["run", "--yes", &reference, "--", "true"], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("dev.bottle.policy"), "{}", out.stderr);
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}
