//! `bottle gc` removes what a killed `bottle` left on disk (a run's
//! `$TMPDIR/bottle-run-*` dir, a `lock`'s half-written blobs and downloads)
//! by owner, not age: leftovers of a dead owner are listed by `--dry-run`
//! and removed by `gc`; a live owner's files, however old, are kept. And it
//! reports only what the engine confirms removed: a network it cannot
//! remove (a container still attached) is a failure, exit 1.

mod common;
mod run_common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bottle::runner::owner;

/// A pid that was ours a moment ago and is gone now.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn write(path: &Path, bytes: usize) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![b'x'; bytes]).unwrap();
    path.to_path_buf()
}

fn temp_paths(json: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = json["temps"]
        .as_array()
        .unwrap_or_else(|| panic!("no temps in {json}"))
        .iter()
        .map(|t| t["path"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn gc_removes_a_dead_owners_temp_files_and_dirs_and_keeps_a_live_ones() {
    if common::require_docker().await.is_none() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("oci/blobs/sha256");
    let fetch = cache.path().join("fetch/sha256");
    let dead = dead_pid();

    // What a SIGKILLed `lock` (a blob and a download half written) and a
    // SIGKILLed `run` (its config dir) leave, named for their dead owner.
    let dead_blob = write(
        &blobs.join(format!("{}k1", owner::stamp_for(".tmp-", dead, 7))),
        1 << 20,
    );
    let dead_part = write(
        &fetch.join(format!("{}k2", owner::stamp_for(".part-", dead, 7))),
        2 << 20,
    );
    let dead_run = tmp
        .path()
        .join(format!("{}k3", owner::stamp_for("bottle-run-", dead, 7)));
    write(&dead_run.join("egress.yaml"), 100);
    // The same, owned by this (live) process, made to look old.
    let live_blob = write(&blobs.join(format!("{}l1", owner::stamp(".tmp-"))), 10);
    let live_run = tmp
        .path()
        .join(format!("{}l2", owner::stamp("bottle-run-")));
    write(&live_run.join("egress.yaml"), 10);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    fs::File::options()
        .write(true)
        .open(&live_blob)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // No owner in the name: a run dir is never guessed at; a fresh store
    // temp file may belong to a writer at work.
    let legacy_run = tmp.path().join("bottle-run-abc123");
    fs::create_dir_all(&legacy_run).unwrap();
    let fresh_unstamped = write(&blobs.join(".tmp-abc123"), 10);

    let env = [
        ("BOTTLE_CACHE_DIR", cache.path().to_str().unwrap()),
        ("TMPDIR", tmp.path().to_str().unwrap()),
    ];
    let dry = common::run_bottle(&["gc", "--dry-run", "--json"], tmp.path(), &env);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let json: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    let mut want: Vec<String> = [&dead_blob, &dead_part, &dead_run]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    want.sort();
    assert_eq!(temp_paths(&json), want);
    let sizes: u64 = json["temps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, (1 << 20) + (2 << 20) + 100);
    assert!(dead_blob.exists() && dead_part.exists() && dead_run.exists());

    let out = common::run_bottle(&["gc"], tmp.path(), &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("3 temp file(s) or dir(s) ({} bytes)", sizes)),
        "{}",
        out.stderr
    );
    for gone in [&dead_blob, &dead_part, &dead_run] {
        assert!(!gone.exists(), "{} survived gc", gone.display());
    }
    for kept in [&live_blob, &live_run, &legacy_run, &fresh_unstamped] {
        assert!(kept.exists(), "gc removed {}", kept.display());
    }
}

/// Labels of a run whose owner is gone, on this host.
fn dead_run_labels(run_id: &str, agent: &str) -> HashMap<String, String> {
    let mut l = HashMap::new();
    for (k, v) in [
        ("dev.bottle.run", run_id.to_string()),
        ("dev.bottle.agent", agent.to_string()),
        ("dev.bottle.role", "network".to_string()),
        ("dev.bottle.owner-pid", dead_pid().to_string()),
        ("dev.bottle.owner-start", "7".to_string()),
        ("dev.bottle.owner-host", owner::hostname()),
        (common::TEST_LABEL, "1".to_string()),
    ] {
        l.insert(k.to_string(), v);
    }
    l
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_reports_a_network_it_could_not_remove_and_exits_1() {
    let Some(fx) = run_common::fixture("tdgcnet", &[]).await else {
        return;
    };
    let docker = &fx.docker;
    let slug = owner::slug();
    let run_id = format!("tdgcnet-{slug}");
    let net = format!("bottle-test-gcnet-{slug}");
    let holder = format!("bottle-test-gcnet-holder-{slug}");
    docker
        .create_network(NetworkCreateRequest {
            name: net.clone(),
            driver: Some("bridge".into()),
            labels: Some(dead_run_labels(&run_id, "tdgcnet")),
            ..Default::default()
        })
        .await
        .unwrap();
    // A container that is not part of the run (gc leaves it alone) keeps
    // the network busy, so the engine refuses to remove it.
    let image = format!("{}/bottle/{}@{}", fx.reg.localhost(), fx.agent, fx.digest);
    bottle::engine::pull(docker, &image, |_| {}).await.unwrap();
    let mut labels = HashMap::new();
    labels.insert(common::TEST_LABEL.to_string(), "1".to_string());
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(holder.clone()),
                platform: String::new(),
            }),
            ContainerCreateBody {
                image: Some(image),
                cmd: Some(vec!["sleep".into(), "300".into()]),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    network_mode: Some(net.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .start_container(
            &holder,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();

    let dry = fx.bottle(&["gc", "--dry-run", "--json"], &[]);
    let out = fx.bottle(&["gc", "--json"], &[]);
    let still_there = docker
        .inspect_network(
            &net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .is_ok();

    // Clean up before asserting, so a failure leaves nothing behind.
    let _ = docker
        .remove_container(
            &holder,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    let _ = docker.remove_network(&net).await;

    let dry: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert!(
        dry["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["networks"][0] == net.as_str()),
        "{dry}"
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(still_there, "the engine removed a network in use?");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        !json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == run_id.as_str()),
        "gc reported a network removed that is still there: {json}"
    );
    let failed = json["failed"].as_array().unwrap();
    assert!(
        failed
            .iter()
            .any(|f| f["kind"] == "network" && f["name"] == net.as_str()),
        "{json}"
    );
    assert!(
        out.stderr
            .contains(&format!("error: could not remove network {net}: ")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_the_temp_dir_of_a_sigkilled_run() {
    let agent = "tdgctmp";
    let Some(fx) = run_common::fixture(agent, &[]).await else {
        return;
    };
    let _c = run_common::Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    };
    let side = run_common::sidecar_image(&fx).await;
    let tmp = tempfile::tempdir().unwrap();
    let tmp_s = tmp.path().to_str().unwrap();
    let mut run = fx.spawn(
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
        &[("TMPDIR", tmp_s)],
    );
    let l = run_common::wait_for(&fx.docker, agent, std::time::Duration::from_secs(60), |l| {
        l.iter()
            .any(|s| s.starts_with("container") && !s.contains("-sidecar"))
    })
    .await;
    assert!(!l.is_empty(), "the run never started: {}", run.stderr());
    let run_dirs = || -> Vec<PathBuf> {
        fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("bottle-run-")
            })
            .collect()
    };
    let dirs = run_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    run.signal(libc::SIGKILL);
    assert_eq!(
        run.wait(std::time::Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert_eq!(run_dirs(), dirs, "SIGKILL cannot be caught: the dir stays");

    let dry = fx.bottle(&["gc", "--dry-run", "--json"], &[("TMPDIR", tmp_s)]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let json: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(temp_paths(&json), [dirs[0].display().to_string()]);
    assert_eq!(json["temps"][0]["owner_pid"], run.pid());
    assert_eq!(run_dirs(), dirs, "--dry-run removed something");

    let out = fx.bottle(&["gc", "--json"], &[("TMPDIR", tmp_s)]);
    // Exit 1 may only come from other runs on this shared engine.
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let failed = json["failed"].to_string();
    assert!(
        out.code == 0 || (out.code == 1 && !failed.contains(agent) && !failed.contains(tmp_s)),
        "{}: {failed}",
        out.stderr
    );
    assert_eq!(temp_paths(&json), [dirs[0].display().to_string()]);
    assert!(run_dirs().is_empty(), "gc left {:?}", run_dirs());
    assert_eq!(
        run_common::leftovers(&fx.docker, agent).await,
        Vec::<String>::new()
    );
}

#[test]
fn gc_sweeps_temp_files_even_when_the_engine_is_down() {
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dead = dead_pid();
    let dead_part = write(
        &cache
            .path()
            .join("fetch/sha256")
            .join(format!("{}k9", owner::stamp_for(".part-", dead, 7))),
        4096,
    );
    let socket = format!("unix://{}/no-engine.sock", tmp.path().display());
    let env = [
        ("BOTTLE_CACHE_DIR", cache.path().to_str().unwrap()),
        ("TMPDIR", tmp.path().to_str().unwrap()),
        ("DOCKER_HOST", socket.as_str()),
    ];
    let out = common::run_bottle(&["gc"], tmp.path(), &env);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(!dead_part.exists(), "{}", out.stderr);
    assert!(
        out.stderr.contains("1 temp file(s) or dir(s) (4096 bytes)"),
        "{}",
        out.stderr
    );
}
