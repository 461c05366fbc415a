//! Attacks and faults against a live bottle, on the real engine: an agent
//! that writes past `limits.disk` (home and /tmp) gets "no space left"
//! while the host's disk is never used; the preflight states the engine's
//! isolation as the engine reports it and as the agent sees it; a sidecar
//! killed mid-session ends the run at once with exit 4 and leaves nothing;
//! an image whose policy label is hostile is refused (exit 2, the field
//! named) before anything is created.

mod common;
mod run_common;

use std::time::Duration;

use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
};
use bottle::policy::{Egress, Limits, Policy, Sidecar, SidecarKind};
use run_common::{Cleanup, fixture, leftovers, push_spec, sidecar_image, wait_for};

fn cleanup(agent: &str) -> Cleanup {
    Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_past_the_disk_limit_fail_in_home_and_tmp() {
    let agent = "fdisk";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    // The fixture's policy: 256 MiB memory, 64 MiB disk. 100 MiB into each
    // writable place must stop at 64 MiB with ENOSPC (not an OOM kill).
    let script = r#"
cat "$HOME/.from-image"
dd if=/dev/zero of="$HOME/big" bs=1M count=100 2>/dev/null; echo home-dd=$?
echo home-size=$(stat -c %s "$HOME/big")
dd if=/dev/zero of=/tmp/big bs=1M count=100 2>/dev/null; echo tmp-dd=$?
echo tmp-size=$(stat -c %s /tmp/big)
df -k "$HOME" /tmp | awk 'NR>1 {print "df:", $1, $2}'
"#;
    let out = fx.bottle(&["run", "--yes", agent, "--", "sh", "-c", script], &[]);
    let o = &out.stdout;
    assert_eq!(out.code, 0, "stdout:\n{o}\nstderr:\n{}", out.stderr);
    assert!(
        o.contains("home-from-image"),
        "the home holds the image's home: {o}"
    );
    let mib = 1024 * 1024;
    for place in ["home", "tmp"] {
        assert!(o.contains(&format!("{place}-dd=1")), "{place}: {o}");
        let size: u64 = o
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{place}-size=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{place} size missing: {o}"));
        assert!(
            size <= 64 * mib && size >= 60 * mib,
            "{place}: wrote {size} bytes past a 64 MiB limit: {o}"
        );
    }
    // Both are tmpfs of 64 MiB (65536 KiB), not the host's disk.
    assert_eq!(
        o.lines().filter(|l| *l == "df: tmpfs 65536").count(),
        2,
        "{o}"
    );
    assert!(
        out.stderr
            .contains("limits: 256 MiB memory, 1 CPUs, 128 pids, 64 MiB disk"),
        "the preflight shows the limit: {}",
        out.stderr
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // `--disk` overrides the policy, and the preflight says so.
    let out = fx.bottle(
        &[
            "run", "--yes", "--disk", "16", agent, "--", "sh", "-c",
            "dd if=/dev/zero of=/dev/shm/big bs=1M count=32 2>/dev/null; echo shm-rc=$? >&2; dd if=/dev/zero of=$HOME/big bs=1M count=32 2>/dev/null; echo rc=$? size=$(stat -c %s $HOME/big)",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let size: u64 = out
        .stdout
        .trim()
        .strip_prefix("rc=1 size=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(size <= 16 * mib && size >= 15 * mib, "{}", out.stdout);
    assert!(out.stderr.contains("16 MiB disk"), "{}", out.stderr);
    assert!(
        out.stderr.contains("shm-rc=1"),
        "/dev/shm too: {}",
        out.stderr
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // A disk limit above the memory limit: the home's pages count against
    // memory, so the writer is OOM-killed before it holds more than that.
    let out = fx.bottle(
        &[
            "run", "--yes", "--memory", "64", "--disk", "256", agent, "--", "sh", "-c",
            "dd if=/dev/zero of=$HOME/big bs=1M count=128 2>/dev/null; echo rc=$? size=$(stat -c %s $HOME/big)",
        ],
        &[],
    );
    if out.stdout.contains("rc=137") {
        let size: u64 = out
            .stdout
            .trim()
            .rsplit("size=")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}", out.stdout));
        assert!(size < 64 * mib, "held {size} bytes with 64 MiB of memory");
    } else {
        assert_eq!(
            out.code, 137,
            "OOM kill expected: {} {}",
            out.stdout, out.stderr
        );
    }
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_preflight_states_the_engines_isolation_as_the_engine_reports_it() {
    let agent = "fengine";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    let info = fx.docker.info().await.unwrap();
    let opts = info.security_options.unwrap_or_default();
    let has = |name: &str| {
        opts.iter()
            .any(|o| o.split(',').any(|kv| kv == format!("name={name}")))
    };
    let out = fx.bottle(
        &["run", "--yes", agent, "--", "cat", "/proc/self/uid_map"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("engine: "))
        .unwrap_or_else(|| panic!("no engine line in the preflight: {}", out.stderr))
        .to_string();
    let remapped = has("userns") || has("rootless");
    assert_eq!(
        line.contains("user namespace shared with the host"),
        !remapped,
        "{line} vs {opts:?}"
    );
    assert_eq!(line.contains("no AppArmor"), !has("apparmor"), "{line}");
    assert_eq!(line.contains("no SELinux"), !has("selinux"), "{line}");
    assert_eq!(line.contains("no seccomp"), !has("seccomp"), "{line}");
    // What the agent sees agrees: without remapping, its uid map is the
    // identity over the whole range (uid 1000 inside is 1000 outside).
    let identity = out
        .stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .starts_with(&["0", "0", "4294967295"]);
    assert_eq!(identity, !remapped, "uid_map {:?} vs {line}", out.stdout);
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

/// Start `bottle run … -- sleep 120` and wait until both containers run;
/// returns the run and its sidecar's name.
async fn start_sleeper(fx: &run_common::Fixture, side: &str) -> (run_common::Spawned, String) {
    let agent = &fx.agent;
    let run = fx.spawn(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            side,
            agent,
            "--",
            "sleep",
            "120",
        ],
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cs = fx
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(
                    [(
                        "label".to_string(),
                        vec![format!("dev.bottle.agent={agent}")],
                    )]
                    .into_iter()
                    .collect(),
                ),
                ..Default::default()
            }))
            .await
            .unwrap();
        let names: Vec<String> = cs
            .iter()
            .flat_map(|c| c.names.clone().unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect();
        if names.len() == 2 {
            let sidecar = names.into_iter().find(|n| n.ends_with("-sidecar")).unwrap();
            return (run, sidecar);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never started: {names:?}\n{}",
            run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_mid_session_ends_the_run_with_exit_4() {
    let agent = "fkill";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    let side = sidecar_image(&fx).await;

    // `docker kill` of the sidecar through the engine API.
    let (mut run, sidecar) = start_sleeper(&fx, &side).await;
    let t0 = std::time::Instant::now();
    fx.docker
        .kill_container(&sidecar, None::<KillContainerOptions>)
        .await
        .unwrap();
    let code = run.wait(Duration::from_secs(30));
    assert_eq!(code, Some(4), "{}", run.stderr());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "noticed late: {:?}",
        t0.elapsed()
    );
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "the egress sidecar {sidecar} stopped (exit code 137)"
        )) && err.contains("no way out"),
        "{err}"
    );
    assert!(err.contains("torn down (exit 4)"), "{err}");
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // `docker rm -f` of the sidecar (its volumes kept): the run ends the
    // same way, and the home volume the sidecar held does not outlive it.
    let (mut run, sidecar) = start_sleeper(&fx, &side).await;
    fx.docker
        .remove_container(
            &sidecar,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                v: false,
                link: false,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        run.wait(Duration::from_secs(30)),
        Some(4),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("no way out"), "{}", run.stderr());
    let left = wait_for(&fx.docker, agent, Duration::from_secs(5), |l| l.is_empty()).await;
    assert_eq!(left, Vec::<String>::new());
}

/// Everything on the engine whose name or labels mention `needle`.
async fn anything_named(docker: &bollard::Docker, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap()
    {
        let text = format!("{:?} {:?}", c.names, c.labels);
        if text.contains(needle) {
            out.push(format!("container {text}"));
        }
    }
    for n in docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .unwrap()
    {
        let text = format!("{:?} {:?}", n.name, n.labels);
        if text.contains(needle) {
            out.push(format!("network {text}"));
        }
    }
    for v in docker
        .list_volumes(None::<ListVolumesOptions>)
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
    {
        let text = format!("{} {:?}", v.name, v.labels);
        if text.contains(needle) {
            out.push(format!("volume {text}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_policy_labels_are_refused_before_anything_is_created() {
    let agent = "fhostile";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = cleanup(agent);
    let base = Policy {
        schema: 1,
        agent: agent.into(),
        egress: Egress {
            allow: vec!["upstream.bottle.test".into()],
            ssh: vec![],
        },
        env: vec!["OK_NAME".into()],
        sidecar: Sidecar {
            kind: SidecarKind::Builtin,
            image: None,
        },
        limits: Limits::default(),
    };
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit); 5] = [
        ("agent", "../../x Y", |v| v["agent"] = "../../x Y".into()),
        ("egress.allow[0]", "fhostile", |v| {
            v["egress"]["allow"][0] = "evil.example/../x".into()
        }),
        ("env[0]", "fhostile", |v| v["env"][0] = "PATH=/tmp:x".into()),
        ("limits.memory_mib", "fhostile", |v| {
            v["limits"]["memory_mib"] = u64::MAX.into()
        }),
        ("limits.disk_mib", "fhostile", |v| {
            v["limits"]["disk_mib"] = 0.into()
        }),
    ];
    for (i, (field, needle, edit)) in cases.into_iter().enumerate() {
        let mut label = serde_json::to_value(&base).unwrap();
        edit(&mut label);
        let mut spec = run_common::agent_spec(&base);
        spec.config
            .labels
            .insert(bottle::policy::POLICY_LABEL.into(), label.to_string());
        let reference = push_spec(&fx, &format!("bottle/hostile{i}"), &spec).await;
        let out = fx.bottle(&["run", "--yes", &reference, "--", "true"], &[]);
        assert_eq!(out.code, 2, "{field}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("policy field `{field}`")),
            "{field}: {}",
            out.stderr
        );
        assert_eq!(
            anything_named(&fx.docker, needle).await,
            Vec::<String>::new(),
            "{field}"
        );
    }
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}
