//! Reproducibility against a real registry: the same agent locked in two
//! copies of the project that differ in absolute path, cache, HOME, umask,
//! mtimes, TZ and creation order gives the committed lockfile byte for
//! byte; one byte of one skill changes exactly one layer; a second lock
//! uploads nothing; a registry that lost the image gets it back from the
//! blob store.

mod common;
mod lock_support;

use lock_support::{Project, Variation, digest_of, lock_json};

const L: &str = "lockfiles/hello.lock.json";

fn registry() -> Option<common::Registry> {
    if !common::require_busybox() {
        return None;
    }
    common::Registry::start()
}

fn push_stats(out: &lock_support::Out) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json output: {e}: {out:?}"));
    v["push"].clone()
}

#[test]
fn two_different_copies_give_the_committed_lockfile_byte_for_byte() {
    let Some(reg) = registry() else { return };
    let committed = std::fs::read(lock_support::repo().join(L)).unwrap();

    let a = Project::new(&["hello"], Variation::default());
    let b = Project::new_in(
        Some("a much/deeper path with spaces"),
        &["hello"],
        Variation {
            reverse: true,
            tight_modes: true,
            mtime: Some(1_234_567_890),
        },
    );
    // No lockfile: both must build from scratch.
    std::fs::remove_file(a.path(L)).unwrap();
    std::fs::remove_file(b.path(L)).unwrap();

    let oa = a.bottle_with(
        &["lock", "hello"],
        Some(&reg.host()),
        &[("TZ", "UTC")],
        Some(0o022),
    );
    assert_eq!(oa.code, 0, "{oa:?}");
    let ob = b.bottle_with(
        &["lock", "hello"],
        Some(&reg.host()),
        &[("TZ", "Pacific/Chatham"), ("LANG", "de_DE.UTF-8")],
        Some(0o077),
    );
    assert_eq!(ob.code, 0, "{ob:?}");
    assert_eq!(digest_of(&oa), digest_of(&ob));
    let want = lock_json(&a, "hello")["image"]["manifest_digest"].clone();
    assert_eq!(serde_json::Value::from(digest_of(&oa)), want);
    assert_eq!(
        String::from_utf8_lossy(&a.read(L)),
        String::from_utf8_lossy(&committed),
        "copy A's lockfile differs from the committed one (regenerate with `bottle lock hello` if the change is intended)"
    );
    assert_eq!(
        a.read(L),
        b.read(L),
        "the two copies wrote different lockfiles"
    );
    // The absolute path of a copy never reaches the lockfile.
    let text = String::from_utf8(b.read(L)).unwrap();
    assert!(!text.contains("deeper path"), "{text}");
    assert!(
        !text.contains(&reg.host()),
        "the lockfile names the registry host"
    );
}

#[test]
fn one_byte_in_one_skill_changes_exactly_one_layer_and_relock_uploads_nothing() {
    let Some(reg) = registry() else { return };
    let p = Project::new(&["hello"], Variation::default());
    let first = p.bottle(&["lock", "hello", "--json"], Some(&reg.host()), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let before = lock_json(&p, "hello");

    // A second lock with nothing changed uploads no blob and keeps the file.
    let bytes = p.read(L);
    let again = p.bottle(&["lock", "hello", "--json"], Some(&reg.host()), &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(push_stats(&again)["blobs_uploaded"], 0, "{again:?}");
    assert_eq!(push_stats(&again)["bytes_uploaded"], 0, "{again:?}");
    assert_eq!(p.read(L), bytes);

    let skill = "agents/hello/skills/greet/SKILL.md";
    let mut md = p.read(skill);
    let last = md.len() - 2;
    md[last] ^= 0x01;
    p.write(skill, md);
    let changed = p.bottle(&["lock", "hello", "--json"], Some(&reg.host()), &[]);
    assert_eq!(changed.code, 0, "{changed:?}");
    let after = lock_json(&p, "hello");
    assert_ne!(
        before["image"]["manifest_digest"],
        after["image"]["manifest_digest"]
    );
    let lb = before["image"]["layers"].as_array().unwrap();
    let la = after["image"]["layers"].as_array().unwrap();
    assert_eq!(lb.len(), la.len());
    let differing: Vec<&str> = lb
        .iter()
        .zip(la)
        .filter(|(x, y)| x["digest"] != y["digest"])
        .map(|(_, y)| y["name"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["skill:greet"]);
    // What went over the wire: that layer and the config, nothing else.
    let stats = push_stats(&changed);
    assert_eq!(stats["blobs_uploaded"], 2, "{changed:?}");
    let layer_size = la.iter().find(|l| l["name"] == "skill:greet").unwrap()["size"]
        .as_u64()
        .unwrap();
    let uploaded = stats["bytes_uploaded"].as_u64().unwrap();
    let blob_size = |d: &serde_json::Value| {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        std::fs::metadata(p.cache.path().join("oci/blobs/sha256").join(hex))
            .unwrap()
            .len()
    };
    let config_size = blob_size(&after["image"]["config_digest"]);
    let manifest_size = blob_size(&after["image"]["manifest_digest"]);
    assert_eq!(uploaded, layer_size + config_size + manifest_size);
    eprintln!(
        "re-lock after one changed byte uploaded {uploaded} bytes: layer {layer_size} + config {config_size} + manifest {manifest_size}"
    );
}

#[test]
fn the_pushed_image_comes_back_verified_and_a_lost_image_is_pushed_again() {
    let Some(reg) = registry() else { return };
    let p = Project::new(&["hello"], Variation::default());
    let out = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let digest = digest_of(&out);

    // Fetch manifest, config and every layer back into an empty store; the
    // registry module verifies each blob against its digest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let store = bottle::oci::BlobStore::open(fresh.path()).unwrap();
    let pulled = rt
        .block_on(bottle::registry::pull_image(
            &format!("{}/bottle/hello@{digest}", reg.host()),
            &bottle::oci::Platform::default(),
            &store,
            &bottle::progress::Progress::hidden(),
        ))
        .unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    let lock = lock_json(&p, "hello");
    for l in lock["image"]["layers"].as_array().unwrap() {
        store.verify(l["digest"].as_str().unwrap()).unwrap();
    }

    // A second, empty registry: the no-op lock notices and pushes from the store.
    let Some(empty) = common::Registry::start() else {
        return;
    };
    let again = p.bottle(&["lock", "hello"], Some(&empty.host()), &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(digest_of(&again), digest);
    assert!(again.stderr.contains("lost"), "{again:?}");
    let there = rt
        .block_on(bottle::registry::manifest_exists(
            &empty.host(),
            "bottle/hello",
            &digest,
        ))
        .unwrap();
    assert!(there);

    // Lost from a third registry AND from the blob store: rebuilt, same digest,
    // lockfile untouched.
    let Some(third) = common::Registry::start() else {
        return;
    };
    std::fs::remove_dir_all(p.cache.path().join("oci")).unwrap();
    let bytes = p.read(L);
    let rebuilt = p.bottle(&["lock", "hello"], Some(&third.host()), &[]);
    assert_eq!(rebuilt.code, 0, "{rebuilt:?}");
    assert_eq!(digest_of(&rebuilt), digest);
    assert!(rebuilt.stderr.contains("rebuilding"), "{rebuilt:?}");
    assert_eq!(p.read(L), bytes);
}

#[test]
fn a_registry_that_is_down_is_exit_3_with_how_to_start_one() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    // Up to date, but the image cannot be confirmed: still exit 3.
    let noop = p.bottle(&["lock", "hello"], None, &[]);
    assert_eq!(noop.code, 3, "{noop:?}");
    assert!(noop.stdout.is_empty(), "{noop:?}");
    std::fs::remove_file(p.path(L)).unwrap();
    let before = p.path(L).exists();
    let out = p.bottle(&["lock", "hello"], None, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("docker-registry serve"), "{out:?}");
    assert_eq!(p.path(L).exists(), before, "a failed lock wrote a lockfile");
}
