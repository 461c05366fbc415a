//! Pulling from a real `docker-registry`: a tag naming an image index
//! resolves to the requested platform's manifest digest; a platform the
//! index lacks is bad input naming what is available; a blob the registry
//! serves with the wrong bytes is caught and never lands in the store.

mod common;

use bottle::error::{Classify, ExitKind};
use bottle::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};
use bottle::oci::{BlobStore, Platform, build, media};
use bottle::progress::Progress;
use bottle::registry::{RegistryClient, RegistryError};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn small_spec(content: &[u8]) -> bottle::oci::spec::ImageSpec {
    let mut spec = common::busybox_spec();
    spec.layers = vec![LayerSpec {
        name: "only".into(),
        entries: vec![Entry {
            path: "etc/content".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            kind: EntryKind::File(FileSource::Bytes(content.to_vec())),
        }],
    }];
    spec
}

#[tokio::test]
async fn tag_of_an_index_resolves_to_the_platform_manifest() {
    init();
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let a = build(&small_spec(b"amd64"), &store).unwrap();
    let b = build(&small_spec(b"pretend-arm64"), &store).unwrap();
    let client = RegistryClient::new(&reg.host()).unwrap();
    let repo = "bottle/multi";
    let none = Progress::hidden();
    client.push(repo, None, &a, &store, &none).await.unwrap();
    client.push(repo, None, &b, &store, &none).await.unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": b.manifest_digest, "size": b.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": media::OCI_MANIFEST, "digest": a.manifest_digest, "size": a.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = client
        .push_manifest_bytes(repo, "multi", &index, media::OCI_INDEX)
        .await
        .unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let store2 = BlobStore::open(fresh.path()).unwrap();
    let pulled = client
        .pull(repo, "multi", &Platform::default(), &store2, &none)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, a.manifest_digest);
    assert_eq!(pulled.index_digest.as_deref(), Some(index_digest.as_str()));
    store2.verify(&a.config_digest).unwrap();
    assert!(
        !store2.has(&b.config_digest),
        "the other platform is not fetched"
    );

    // The index says arm64 but the config says amd64: refused, not trusted.
    let arm = Platform::parse("linux/arm64/v8").unwrap();
    let err = client
        .pull(repo, "multi", &arm, &store2, &none)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NoPlatform { .. }), "{err}");

    let s390 = Platform::parse("linux/s390x").unwrap();
    let err = client
        .pull(repo, "multi", &s390, &store2, &none)
        .await
        .unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::BadInput);
    assert!(
        err.to_string().contains("linux/arm64/v8, linux/amd64"),
        "{err}"
    );

    // Pulling the index by its digest works the same.
    let by_digest = client
        .pull(repo, &index_digest, &Platform::default(), &store2, &none)
        .await
        .unwrap();
    assert_eq!(by_digest.manifest_digest, a.manifest_digest);
}

#[tokio::test]
async fn a_blob_served_with_wrong_bytes_is_caught() {
    init();
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let img = build(&small_spec(b"honest"), &store).unwrap();
    let client = RegistryClient::new(&reg.host()).unwrap();
    let none = Progress::hidden();
    client
        .push("bottle/tamper", None, &img, &store, &none)
        .await
        .unwrap();

    // Corrupt the layer inside the registry's own storage (same length, so
    // only the digest can tell).
    let hex = img.layers[0].digest.trim_start_matches("sha256:");
    let data = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let store2 = BlobStore::open(fresh.path()).unwrap();
    let err = client
        .pull(
            "bottle/tamper",
            &img.manifest_digest,
            &Platform::default(),
            &store2,
            &none,
        )
        .await
        .unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Failure, "{err:?}");
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(!store2.has(&img.layers[0].digest));
    assert!(
        !store2.has(&img.manifest_digest),
        "a partial image is not announced"
    );
}

#[tokio::test]
async fn copy_between_registries_keeps_the_digest() {
    init();
    let (Some(src), Some(dst)) = (common::Registry::start(), common::Registry::start()) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let img = build(&small_spec(b"copied"), &store).unwrap();
    let none = Progress::hidden();
    bottle::registry::push(&src.host(), "bottle/src", None, &img, &store, &none)
        .await
        .unwrap();

    // From an empty blob store: everything is fetched from `src`, verified.
    let other = tempfile::tempdir().unwrap();
    let store2 = BlobStore::open(other.path()).unwrap();
    let stats = bottle::registry::copy(
        (&src.host(), "bottle/src"),
        &img.manifest_digest,
        (&dst.host(), "team/copy"),
        Some("v1"),
        &store2,
        &none,
    )
    .await
    .unwrap();
    assert_eq!(stats.blobs_uploaded, 2, "{stats:?}");
    let client = RegistryClient::new(&dst.host()).unwrap();
    assert!(
        client
            .manifest_exists("team/copy", &img.manifest_digest)
            .await
            .unwrap()
    );
    let third = tempfile::tempdir().unwrap();
    let store3 = BlobStore::open(third.path()).unwrap();
    let pulled = client
        .pull("team/copy", "v1", &Platform::default(), &store3, &none)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);

    // Within one registry, the layer is mounted rather than uploaded.
    let within = bottle::registry::copy(
        (&dst.host(), "team/copy"),
        &img.manifest_digest,
        (&dst.host(), "team/again"),
        None,
        &store2,
        &none,
    )
    .await
    .unwrap();
    assert_eq!(
        (within.blobs_mounted, within.blobs_uploaded),
        (2, 0),
        "{within:?}"
    );
}
