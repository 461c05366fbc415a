//! Against a real Debian `docker-registry` on a loopback port: a pushed
//! image comes back blob for blob with the same digests, a second push
//! uploads nothing, a lost manifest is noticed, and a registry that is down
//! is an environment error that says how to start one.

mod common;

use bottle::error::{Classify, ExitKind};
use bottle::oci::{BlobStore, Platform, build};
use bottle::progress::Progress;
use bottle::registry::{self, RegistryClient};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn push_fetch_back_verify_and_push_again_uploads_nothing() {
    init();
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let image = build(&common::busybox_spec(), &store).unwrap();
    let client = RegistryClient::new(&reg.host()).unwrap();
    let repo = "bottle/test-busybox";

    assert!(
        !client
            .manifest_exists(repo, &image.manifest_digest)
            .await
            .unwrap()
    );
    let first = client
        .push(repo, Some("latest"), &image, &store, &Progress::hidden())
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", reg.log()));
    assert_eq!(first.blobs_uploaded, 2, "{first:?}");
    assert_eq!(first.blobs_skipped, 0);
    let layer_and_config = image.layers[0].size + image.config.len() as u64;
    assert_eq!(
        first.bytes_uploaded,
        layer_and_config + image.manifest.len() as u64
    );
    assert!(
        client
            .manifest_exists(repo, &image.manifest_digest)
            .await
            .unwrap()
    );

    // Fetch everything back into an empty store: by digest and by tag.
    let cache2 = tempfile::tempdir().unwrap();
    let store2 = BlobStore::open(cache2.path()).unwrap();
    let pulled = client
        .pull(
            repo,
            &image.manifest_digest,
            &Platform::default(),
            &store2,
            &Progress::hidden(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.blobs_downloaded, 2);
    store2.verify(&image.manifest_digest).unwrap();
    store2.verify(&image.config_digest).unwrap();
    for l in &image.layers {
        store2.verify(&l.digest).unwrap();
    }
    assert_eq!(
        store2.read(&image.manifest_digest, "m").unwrap(),
        image.manifest
    );
    let by_tag = registry::pull_image(
        &format!("{}/{repo}:latest", reg.host()),
        &Platform::default(),
        &store2,
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(by_tag.manifest_digest, image.manifest_digest);
    assert_eq!(
        by_tag.blobs_downloaded, 0,
        "blobs already in the store are not fetched again"
    );

    // Second push: every blob is already there.
    let second = client
        .push(repo, Some("latest"), &image, &store, &Progress::hidden())
        .await
        .unwrap();
    assert_eq!(second.blobs_uploaded, 0, "{second:?}");
    assert_eq!(second.blobs_skipped, 2);

    // A second image on the same base layer: only its new layer + config go up.
    let mut spec = common::busybox_spec();
    spec.layers.push(bottle::oci::spec::LayerSpec {
        name: "extra".into(),
        entries: vec![bottle::oci::spec::Entry {
            path: "etc/extra".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            kind: bottle::oci::spec::EntryKind::File(bottle::oci::spec::FileSource::Bytes(
                b"x".to_vec(),
            )),
        }],
    });
    let image2 = build(&spec, &store).unwrap();
    let third = client
        .push(repo, None, &image2, &store, &Progress::hidden())
        .await
        .unwrap();
    eprintln!(
        "push stats: first {first:?}; again {second:?}; one new layer {third:?} (layer {} config {} manifest {}; base layer {})",
        image2.layers[1].size,
        image2.config.len(),
        image2.manifest.len(),
        image.layers[0].size
    );
    assert_eq!(
        (third.blobs_uploaded, third.blobs_skipped),
        (2, 1),
        "{third:?}"
    );
    assert_eq!(
        third.bytes_uploaded,
        image2.layers[1].size + image2.config.len() as u64 + image2.manifest.len() as u64
    );
}

#[tokio::test]
async fn a_manifest_the_registry_lost_is_reported_missing() {
    init();
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let mut spec = common::busybox_spec();
    // No busybox needed for this one.
    spec.layers[0].entries.retain(|e| e.path == "tmp");
    let image = build(&spec, &store).unwrap();
    registry::push(
        &reg.host(),
        "bottle/lost",
        None,
        &image,
        &store,
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert!(
        registry::manifest_exists(&reg.host(), "bottle/lost", &image.manifest_digest)
            .await
            .unwrap()
    );
    // Wipe the registry's storage as if it had been reset.
    std::fs::remove_dir_all(reg.storage()).unwrap();
    std::fs::create_dir_all(reg.storage()).unwrap();
    assert!(
        !registry::manifest_exists(&reg.host(), "bottle/lost", &image.manifest_digest)
            .await
            .unwrap()
    );
    // Pushing again from the blob store brings it back.
    let again = registry::push(
        &reg.host(),
        "bottle/lost",
        None,
        &image,
        &store,
        &Progress::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(again.blobs_uploaded, 2);
    assert!(
        registry::manifest_exists(&reg.host(), "bottle/lost", &image.manifest_digest)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_registry_that_is_down_is_an_environment_error() {
    init();
    let port = common::free_port();
    let host = format!("127.0.0.1:{port}");
    let digest = format!("sha256:{}", "a".repeat(64));
    let err = registry::manifest_exists(&host, "bottle/x", &digest)
        .await
        .unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Environment, "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&host) && msg.contains("docker-registry serve"),
        "{msg}"
    );

    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let err = registry::pull_image(
        &format!("{host}/bottle/x:latest"),
        &Platform::default(),
        &store,
        &Progress::hidden(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Environment, "{err:?}");
}

#[tokio::test]
async fn bad_references_are_bad_input() {
    init();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    for r in ["UPPER/Case:tag", "127.0.0.1:1/x@sha256:short", ""] {
        let err = registry::pull_image(r, &Platform::default(), &store, &Progress::hidden())
            .await
            .unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::BadInput, "{r}: {err:?}");
    }
}

#[tokio::test]
async fn base_layers_are_mounted_from_another_repository_not_uploaded() {
    init();
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let client = RegistryClient::new(&reg.host()).unwrap();
    let none = Progress::hidden();
    let base = build(&common::busybox_spec(), &store).unwrap();
    client
        .push("bottle/base", None, &base, &store, &none)
        .await
        .unwrap();

    let mut spec = common::busybox_spec();
    spec.base = bottle::oci::spec::Base::Image {
        reference: format!("{}/bottle/base@{}", reg.host(), base.manifest_digest),
        manifest_digest: base.manifest_digest.clone(),
    };
    spec.layers[0].name = "agent".into();
    spec.layers[0].entries.retain(|e| e.path == "tmp");
    let agent = build(&spec, &store).unwrap();
    assert_eq!(agent.layers[0].digest, base.layers[0].digest);
    let opts = registry::PushOptions {
        mount_from: vec!["bottle/base".into(), "bottle/does-not-exist".into()],
    };
    let stats = client
        .push_with("bottle/agent", Some("latest"), &agent, &store, &none, &opts)
        .await
        .unwrap();
    assert_eq!(stats.blobs_mounted, 1, "{stats:?}");
    assert_eq!(stats.blobs_uploaded, 2, "{stats:?}");
    assert_eq!(
        stats.bytes_uploaded,
        agent.layers[1].size + agent.config.len() as u64 + agent.manifest.len() as u64
    );
    // The mounted layer is really there: a fresh pull gets the whole image.
    let fresh = tempfile::tempdir().unwrap();
    let store2 = BlobStore::open(fresh.path()).unwrap();
    let pulled = client
        .pull(
            "bottle/agent",
            "latest",
            &Platform::default(),
            &store2,
            &none,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, agent.manifest_digest);
    store2.verify(&base.layers[0].digest).unwrap();
}

#[tokio::test]
async fn a_corrupted_local_blob_is_refused_by_the_registry_as_a_failure() {
    init();
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let mut spec = common::busybox_spec();
    spec.layers[0].entries.retain(|e| e.path == "tmp");
    let image = build(&spec, &store).unwrap();
    // Flip a byte of the layer blob behind the store's back (same size).
    let path = store.blob_path(&image.layers[0].digest).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = registry::push(
        &reg.host(),
        "bottle/corrupt",
        None,
        &image,
        &store,
        &Progress::hidden(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Failure, "{err:?}");
    assert!(err.to_string().contains("blob store"), "{err}");
    assert!(
        !registry::manifest_exists(&reg.host(), "bottle/corrupt", &image.manifest_digest)
            .await
            .unwrap()
    );
}
