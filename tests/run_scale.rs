//! Many bottles on one engine, against the real engine: 25 at once all
//! succeed and leave nothing behind, on subnets from bottle's own pool that
//! never overlap while they exist and never come from the engine's default
//! pools; a pool too small for the bottles racing for it gives clean
//! refusals (the engine's overlap check is the arbiter); admission refuses
//! before creating anything, naming the count and what to do.

mod common;
mod run_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::ListNetworksOptions;
use bottle::netpool::{DEFAULT_POOL, ENGINE_DEFAULT_POOLS, Subnet};
use run_common::{Cleanup, Fixture, fixture, leftovers, sidecar_image};

fn cleanup(agent: &str) -> Cleanup {
    Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    }
}

/// Every snapshot of `agent`'s run networks: name → subnet.
type Snapshots = Arc<Mutex<Vec<BTreeMap<String, Subnet>>>>;

fn watch_networks(fx: &Fixture, agent: &str) -> (Snapshots, tokio::sync::oneshot::Sender<()>) {
    let docker = fx.docker.clone();
    let seen: Snapshots = Arc::default();
    let out = seen.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
    let label = format!("dev.bottle.agent={agent}");
    tokio::spawn(async move {
        loop {
            let mut filters = std::collections::HashMap::new();
            filters.insert("label".to_string(), vec![label.clone()]);
            if let Ok(list) = docker
                .list_networks(Some(ListNetworksOptions {
                    filters: Some(filters),
                }))
                .await
            {
                let snap: BTreeMap<String, Subnet> = list
                    .into_iter()
                    .map(|n| {
                        let subnet = n
                            .ipam
                            .and_then(|i| i.config)
                            .and_then(|c| c.into_iter().next())
                            .and_then(|c| c.subnet)
                            .unwrap_or_default();
                        let name = n.name.unwrap_or_default();
                        let parsed = subnet.parse::<Subnet>().unwrap_or_else(|e| {
                            panic!("network {name} has subnet `{subnet}`: {e}")
                        });
                        (name, parsed)
                    })
                    .collect();
                out.lock().unwrap().push(snap);
            }
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    (seen, stop_tx)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_five_bottles_at_once_on_their_own_small_subnets() {
    let agent = "scale25";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let side = sidecar_image(&fx).await;
    let _c = cleanup(agent);
    let (seen, stop) = watch_networks(&fx, agent);
    let n = 25;
    let mut runs: Vec<_> = (0..n)
        .map(|i| {
            let cmd = format!("sleep 3; echo done-{i}");
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
            r.wait(Duration::from_secs(240)),
            Some(0),
            "run {i}: {}",
            r.stderr()
        );
        assert_eq!(r.stdout(), format!("done-{i}\n"));
    }
    let _ = stop.send(());
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    let snaps = seen.lock().unwrap().clone();
    let pool: Subnet = DEFAULT_POOL.parse().unwrap();
    let engine_pools: Vec<Subnet> = ENGINE_DEFAULT_POOLS
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let mut names = std::collections::BTreeSet::new();
    let mut most_at_once = 0;
    for snap in &snaps {
        most_at_once = most_at_once.max(snap.len());
        let nets: Vec<(&String, &Subnet)> = snap.iter().collect();
        for (i, (a, sa)) in nets.iter().enumerate() {
            names.insert((*a).clone());
            assert!(pool.contains(sa), "{a} on {sa}, outside {pool}");
            assert_eq!(sa.prefix(), 28, "{a} on {sa}");
            for e in &engine_pools {
                assert!(!e.overlaps(sa), "{a} on {sa}, inside the engine's pool {e}");
            }
            for (b, sb) in &nets[i + 1..] {
                assert!(!sa.overlaps(sb), "{a} ({sa}) and {b} ({sb}) overlap");
            }
        }
    }
    // Each run's internal and egress networks were seen, most at once:
    // on a stock engine's default pools about 30 networks exist at most.
    assert_eq!(names.len(), 2 * n, "{names:?}");
    assert!(most_at_once > 30, "at most {most_at_once} networks at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn bottles_racing_for_a_small_pool_lose_cleanly() {
    let agent = "scalerace";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let side = sidecar_image(&fx).await;
    let _c = cleanup(agent);
    // Four slots: room for two bottles. All four runs see it free, are
    // admitted, and then race for it on the engine.
    let pool = [("BOTTLE_SUBNET_POOL", "10.252.7.0/26")];
    let mut runs: Vec<_> = (0..4)
        .map(|i| {
            let cmd = format!("sleep 4; echo done-{i}");
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
                &pool,
            )
        })
        .collect();
    let mut ok = 0;
    for (i, r) in runs.iter_mut().enumerate() {
        match r.wait(Duration::from_secs(120)) {
            Some(0) => {
                ok += 1;
                assert_eq!(r.stdout(), format!("done-{i}\n"));
            }
            Some(3) => {
                let err = r.stderr();
                assert!(
                    err.contains("no free subnet") && err.contains("10.252.7.0/26"),
                    "run {i}: {err}"
                );
                assert!(r.stdout().is_empty(), "run {i} ran: {}", r.stdout());
            }
            other => panic!("run {i}: {other:?}: {}", r.stderr()),
        }
    }
    assert!((1..=2).contains(&ok), "{ok} of 4 ran on a pool for 2");
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_refuses_before_creating_anything() {
    let agent = "scaleadmit";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let side = sidecar_image(&fx).await;
    let _c = cleanup(agent);
    let run = |extra: &[(&str, &str)], more: &[&str]| {
        let mut args = vec!["run", "--yes", "--sidecar-image", side.as_str()];
        args.extend_from_slice(more);
        args.extend_from_slice(&[agent, "--", "sh", "-c", "echo ran"]);
        fx.bottle(&args, extra)
    };

    // One slot: a bottle needs two networks.
    let tiny = run(&[("BOTTLE_SUBNET_POOL", "10.252.9.0/28")], &[]);
    assert_eq!(tiny.code, 3, "{}", tiny.stderr);
    assert!(tiny.stdout.is_empty());
    for want in [
        "cannot start another bottle",
        "10.252.9.0/28",
        "1 of 1 free",
        "bottles exist",
        "BOTTLE_SUBNET_POOL",
    ] {
        assert!(
            tiny.stderr.contains(want),
            "missing `{want}`: {}",
            tiny.stderr
        );
    }
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // More memory than the host has.
    let huge = run(&[], &["--memory", "100000000"]);
    assert_eq!(huge.code, 3, "{}", huge.stderr);
    assert!(
        huge.stderr.contains("MiB available") && huge.stderr.contains("--memory"),
        "{}",
        huge.stderr
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // A pool in public address space, or malformed: a usage error naming it.
    for bad in ["8.8.0.0/16", "198.18.0.1/15", "banana"] {
        let r = run(&[("BOTTLE_SUBNET_POOL", bad)], &[]);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(r.stderr.contains(bad), "{bad}: {}", r.stderr);
    }

    // The same run on the default pool works.
    let ok = run(&[], &[]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout, "ran\n");
}
