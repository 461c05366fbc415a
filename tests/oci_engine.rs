//! End to end through the real Docker engine: an image built by `oci` and
//! pushed by `registry` to a loopback `docker-registry` is pulled by the
//! engine BY DIGEST and runs `busybox echo`. Proves the bytes are a valid
//! image, not just self-consistent.
//!
//! It also records which loopback spelling the engine accepts for plain-HTTP
//! pulls (`127.0.0.1:<port>` and `localhost:<port>`; both are in Docker's
//! default insecure set, 127.0.0.0/8 and localhost).

mod common;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, WaitContainerOptions,
};
use futures_util::{FutureExt, StreamExt};

use bottle::oci::{BlobStore, build};
use bottle::progress::Progress;
use bottle::registry;

async fn pull(docker: &Docker, reference: &str) -> Result<(), String> {
    let opts = CreateImageOptions {
        from_image: Some(reference.to_string()),
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), None, None);
    while let Some(item) = s.next().await {
        item.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn run_echo(docker: &Docker, image: &str, name: &str) -> Result<(i64, String), String> {
    let mut labels = HashMap::new();
    labels.insert(common::TEST_LABEL.to_string(), "1".to_string());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec![
            "busybox".into(),
            "echo".into(),
            "hello from a bottle-built image".into(),
        ]),
        labels: Some(labels),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| format!("create: {e}"))?;
    docker
        .start_container(name, None)
        .await
        .map_err(|e| format!("start: {e}"))?;
    let mut code = -1;
    let mut w = docker.wait_container(name, None::<WaitContainerOptions>);
    while let Some(r) = w.next().await {
        code = r.map_err(|e| format!("wait: {e}"))?.status_code;
    }
    let mut out = String::new();
    let logs = LogsOptions {
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    };
    let mut l = docker.logs(name, Some(logs));
    while let Some(chunk) = l.next().await {
        out.push_str(&chunk.map_err(|e| format!("logs: {e}"))?.to_string());
    }
    Ok((code, out))
}

#[tokio::test]
async fn engine_pulls_by_digest_from_loopback_registry_and_runs_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let image = build(&common::busybox_spec(), &store).unwrap();
    let repo = "bottle/test-engine";
    registry::push(&reg.host(), repo, None, &image, &store, &Progress::hidden())
        .await
        .unwrap();

    let by_ip = format!("{}/{repo}@{}", reg.host(), image.manifest_digest);
    let by_name = format!("{}/{repo}@{}", reg.localhost(), image.manifest_digest);
    let container = format!("bottle-test-oci-engine-{}", std::process::id());

    let body = AssertUnwindSafe(async {
        let ip = pull(&docker, &by_ip).await;
        let name = pull(&docker, &by_name).await;
        eprintln!("engine pull via 127.0.0.1: {ip:?}; via localhost: {name:?}");
        assert!(ip.is_ok(), "engine could not pull {by_ip}: {ip:?}");
        assert!(name.is_ok(), "engine could not pull {by_name}: {name:?}");
        let (code, out) = run_echo(&docker, &by_ip, &container).await.unwrap();
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.trim(), "hello from a bottle-built image");
        // The engine agrees on the image identity: its RepoDigests carry
        // the manifest digest we computed.
        let inspect = docker.inspect_image(&by_ip).await.unwrap();
        let digests = inspect.repo_digests.unwrap_or_default();
        assert!(
            digests.iter().any(|d| d.ends_with(&image.manifest_digest)),
            "{digests:?}"
        );
    })
    .catch_unwind()
    .await;

    // Cleanup always runs, even when an assertion above failed.
    let rm = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_container(&container, Some(rm)).await;
    for r in [&by_ip, &by_name] {
        let opts = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        let _ = docker.remove_image(r, Some(opts), None).await;
    }
    if let Err(p) = body {
        std::panic::resume_unwind(p);
    }
}

/// Engine 20.10 cannot load OCI archives; ours doubles as a `docker load`
/// archive. Loaded through bollard (no registry), the image ID is our config
/// digest and the image runs.
#[tokio::test]
async fn engine_loads_the_docker_archive_and_runs_it() {
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let mut spec = common::busybox_spec();
    // A label unique to this test, so its image ID differs from the pull test's.
    spec.config
        .labels
        .insert(common::TEST_LABEL.into(), "archive".into());
    let image = build(&spec, &store).unwrap();
    let tag = format!("bottle-test/archive:{}", std::process::id());
    let bytes =
        bottle::oci::archive::archive_bytes(&image, &store, std::slice::from_ref(&tag)).unwrap();
    let container = format!("bottle-test-oci-archive-{}", std::process::id());

    let body = AssertUnwindSafe(async {
        let opts = bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut s = docker.import_image(opts, bollard::body_full(bytes.into()), None);
        while let Some(item) = s.next().await {
            item.expect("docker load");
        }
        let inspect = docker.inspect_image(&tag).await.unwrap();
        assert_eq!(inspect.id.as_deref(), Some(image.config_digest.as_str()));
        let (code, out) = run_echo(&docker, &tag, &container).await.unwrap();
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.trim(), "hello from a bottle-built image");
    })
    .catch_unwind()
    .await;

    let rm = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_container(&container, Some(rm)).await;
    let opts = RemoveImageOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_image(&tag, Some(opts), None).await;
    if let Err(p) = body {
        std::panic::resume_unwind(p);
    }
}
