//! The teardown guard on the panic path: a task that registered a network
//! and a temp dir and then panics still leaves nothing behind (the guard's
//! `Drop` removes them on its own thread and runtime).

mod common;

use std::collections::HashMap;

use bottle::runner::Teardown;

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_mid_run_still_tears_down() {
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let name = format!("bottle-guardpanic-{}-net", std::process::id());
    let labels = vec![
        ("dev.bottle.test".to_string(), "1".to_string()),
        ("dev.bottle.agent".to_string(), "guardpanic".to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let (d, n) = (docker.clone(), name.clone());
    let task = tokio::spawn(async move {
        let mut guard = Teardown::new();
        guard.tempdir(dir);
        guard.network(&n);
        bottle::engine::create_bridge_network(&d, &n, &labels, None)
            .await
            .unwrap();
        assert!(
            d.inspect_network(&n, None::<bollard::query_parameters::InspectNetworkOptions>)
                .await
                .is_ok()
        );
        panic!("simulated bug mid-run");
    });
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    let mut filters = HashMap::new();
    filters.insert("name".to_string(), vec![name.clone()]);
    let left = docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap();
    if !left.is_empty() {
        let _ = docker.remove_network(&name).await;
    }
    assert!(left.is_empty(), "network survived the panic: {left:?}");
    assert!(!dir_path.exists(), "temp dir survived the panic");
}
