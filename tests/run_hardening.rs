//! Hardening, seen two ways against the real engine: `docker inspect` (via
//! the engine API) of the agent and the sidecar shows every setting, and
//! the agent's own view agrees (seccomp filter on, no-new-privileges, no
//! capabilities, non-root, read-only root, writable /tmp and home, no
//! engine socket). Secrets reach only the sidecar, over its stdin: the
//! agent's environment holds placeholders of the same length, and no value
//! is in any process's argv on the host, bottle's output, either container's
//! config (`docker inspect`) or log, or labels. The writable home dies with
//! the bottle.

mod common;
mod run_common;

use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use run_common::{Cleanup, fixture, leftovers, sidecar_image, wait_for};

const SECRET: &str = "hardening-secret-9f1c2e";
const TOKEN: &str = "hardening-oauth-7d3b4a";

fn argv_holding(needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            hits.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_and_sidecar_are_hardened_and_secrets_stay_in_the_engine_api() {
    let agent = "hardened";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    };
    let side = sidecar_image(&fx).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    // The script sees only digests of the secrets, so it can check them
    // without putting them on any argv itself.
    let digest = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    let secret_real = format!("env-secret={}", digest(SECRET));
    let token_real = format!("env-token={}", digest(TOKEN));
    let secret_len = format!("env-secret-len={}", SECRET.len());
    let token_len = format!("env-token-len={}", TOKEN.len());
    let script = r#"
grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -d '\t ' 
echo uid=$(id -u)
if touch /rootfs-probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi
touch /tmp/probe && echo tmp=writable
touch "$HOME/probe" && echo home=writable
if [ -e /var/run/docker.sock ] || [ -e /run/docker.sock ]; then echo sock=present; else echo sock=absent; fi
echo env-secret=$(printf %s "$BOTTLE_TEST_SECRET" | sha256sum | awk '{print $1}')
echo env-token=$(printf %s "$CLAUDE_CODE_OAUTH_TOKEN" | sha256sum | awk '{print $1}')
echo env-secret-len=${#BOTTLE_TEST_SECRET}
echo env-token-len=${#CLAUDE_CODE_OAUTH_TOKEN}
echo base-url=$ANTHROPIC_BASE_URL
[ -z "$CLAUDE_BOTTLE_OAUTH_TOKEN" ] && echo host-var-name=absent
echo checks-done
sleep 60
"#;
    let mut run = fx.spawn(
        &[
            "run",
            "--yes",
            "--sidecar-image",
            &side,
            agent,
            "--",
            "sh",
            "-c",
            script,
        ],
        &[
            ("BOTTLE_TEST_SECRET", SECRET),
            ("CLAUDE_BOTTLE_OAUTH_TOKEN", TOKEN),
            ("BOTTLE_STATE_DIR", state_dir),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.stdout().contains("checks-done") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = run.stdout();
    assert!(
        o.contains("checks-done"),
        "stdout:\n{o}\nstderr:\n{}",
        run.stderr()
    );
    for want in [
        "Seccomp:2",
        "NoNewPrivs:1",
        "CapEff:0000000000000000",
        "uid=1000",
        "rootfs=read-only",
        "tmp=writable",
        "home=writable",
        "sock=absent",
        secret_len.as_str(),
        token_len.as_str(),
        "host-var-name=absent",
        "base-url=http://bottle-hardened-",
    ] {
        assert!(o.contains(want), "missing {want} in:\n{o}");
    }
    // The agent holds placeholders, not the values.
    assert!(!o.contains(&secret_real) && !o.contains(&token_real), "{o}");

    // No process on the host carries a secret in its argv (bottle, the
    // engine, the shims, the container's processes).
    for s in [SECRET, TOKEN] {
        assert_eq!(argv_holding(s), Vec::<String>::new());
    }

    let docker = &fx.docker;
    let containers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
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
    assert_eq!(containers.len(), 2);
    let mut home_volume = None;
    for c in &containers {
        let name = c.names.as_ref().unwrap()[0]
            .trim_start_matches('/')
            .to_string();
        let i = docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .unwrap();
        let cfg = i.config.clone().unwrap();
        let h = i.host_config.clone().unwrap();
        let is_agent = !name.ends_with("-sidecar");
        let user = cfg.user.clone().unwrap_or_default();
        assert!(
            !user.is_empty() && !user.starts_with('0') && !user.starts_with("root"),
            "{name}: user {user}"
        );
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]), "{name}");
        assert!(h.cap_add.as_ref().is_none_or(|v| v.is_empty()), "{name}");
        let sec = h.security_opt.clone().unwrap_or_default();
        assert!(
            sec.iter().any(|s| s == "no-new-privileges:true"),
            "{name}: {sec:?}"
        );
        assert!(
            !sec.iter().any(|s| s.contains("unconfined")),
            "{name}: default seccomp/apparmor: {sec:?}"
        );
        assert_eq!(h.readonly_rootfs, Some(true), "{name}");
        assert!(h.tmpfs.as_ref().unwrap().contains_key("/tmp"), "{name}");
        assert_eq!(h.init, Some(true), "{name}");
        assert!(h.pids_limit.unwrap_or(0) > 0, "{name}");
        assert!(h.memory.unwrap_or(0) > 0, "{name}");
        assert!(h.nano_cpus.unwrap_or(0) > 0, "{name}");
        assert_eq!(h.memory_swap, h.memory, "{name}: no swap beyond the limit");
        assert_eq!(h.privileged, Some(false), "{name}");
        assert_ne!(h.publish_all_ports, Some(true), "{name}");
        assert!(
            h.port_bindings.as_ref().is_none_or(|p| p.is_empty()),
            "{name}"
        );
        assert!(
            h.binds.as_ref().is_none_or(|b| b.is_empty()),
            "{name}: no bind mounts"
        );
        for m in i.mounts.clone().unwrap_or_default() {
            assert_ne!(
                m.typ.as_deref(),
                Some("bind"),
                "{name}: unexpected bind mount {m:?}"
            );
            if is_agent && m.destination.as_deref() == Some("/home/agent") {
                home_volume = m.name.clone();
            }
        }
        for ns in [
            &h.pid_mode,
            &h.uts_mode,
            &h.userns_mode,
            &h.cgroupns_mode.map(|m| m.to_string()),
        ] {
            assert_ne!(ns.as_deref(), Some("host"), "{name}: host namespace");
        }
        assert_ne!(h.network_mode.as_deref(), Some("host"), "{name}");
        assert_ne!(h.ipc_mode.as_deref(), Some("host"), "{name}");
        let env = cfg.env.clone().unwrap_or_default().join("\n");
        let labels = format!("{:?}", cfg.labels);
        assert!(
            !labels.contains(SECRET) && !labels.contains(TOKEN),
            "{name}: secret in labels"
        );
        if is_agent {
            assert_eq!(user, "1000:1000");
            assert_eq!(h.pids_limit, Some(128));
            assert_eq!(h.memory, Some(256 * 1024 * 1024));
            assert_eq!(h.nano_cpus, Some(1_000_000_000));
            let nets: Vec<String> = i
                .network_settings
                .unwrap()
                .networks
                .unwrap()
                .into_keys()
                .collect();
            assert_eq!(
                nets.len(),
                1,
                "agent is on its internal network only: {nets:?}"
            );
            let net = docker
                .inspect_network(
                    &nets[0],
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .unwrap();
            assert_eq!(net.internal, Some(true));
            assert_ne!(net.enable_ipv6, Some(true));
        }
        assert!(
            !env.contains(SECRET) && !env.contains(TOKEN),
            "{name}: a secret in the container's config env"
        );
        let cmd = format!("{:?} {:?}", cfg.cmd, cfg.entrypoint);
        assert!(
            !cmd.contains(SECRET) && !cmd.contains(TOKEN),
            "{name}: {cmd}"
        );
        let mut logs = docker.logs(
            &name,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        use futures_util::StreamExt as _;
        while let Some(Ok(l)) = logs.next().await {
            let l = l.to_string();
            assert!(!l.contains(SECRET) && !l.contains(TOKEN), "{name} log: {l}");
        }
    }
    let home_volume = home_volume.expect("the agent's home is an anonymous volume");

    run.signal(libc::SIGTERM);
    assert_eq!(
        run.wait(Duration::from_secs(30)),
        Some(143),
        "{}",
        run.stderr()
    );
    for s in [SECRET, TOKEN] {
        assert!(
            !run.stdout().contains(s),
            "the agent's output names no secret here"
        );
        assert!(!run.stderr().contains(s), "bottle printed a secret");
    }
    // The run's audit record holds the sidecar's lines, and no secret.
    let records: Vec<_> = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = std::fs::read_to_string(records[0].path()).unwrap();
    assert!(record.contains("\"event\":\"ready\""), "{record}");
    assert!(!record.contains(SECRET) && !record.contains(TOKEN));
    assert_eq!(leftovers(docker, agent).await, Vec::<String>::new());
    let gone = wait_for(docker, agent, Duration::from_secs(1), |_| true).await;
    assert!(gone.is_empty());
    assert!(
        docker.inspect_volume(&home_volume).await.is_err(),
        "the home volume {home_volume} outlived the bottle"
    );
}
