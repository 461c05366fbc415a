//! `bottle gc` also clears temp files a killed writer left in the blob store,
//! but only old ones: a `lock` running right now keeps its temp file.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use bottle::oci::BlobStore;

#[tokio::test]
async fn gc_removes_stale_store_temps_and_keeps_fresh_ones() {
    if common::require_docker().await.is_none() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path().join("oci")).unwrap();
    let blobs = store.root().join("blobs").join("sha256");
    fs::create_dir_all(&blobs).unwrap();
    let stale = blobs.join(".tmp-stale");
    let fresh = blobs.join(".tmp-fresh");
    fs::write(&stale, b"half a blob").unwrap();
    fs::write(&fresh, b"a blob being written").unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();

    let cache_dir = cache.path().to_str().unwrap();
    let dry = common::run_bottle(
        &["gc", "--dry-run"],
        cache.path(),
        &[("BOTTLE_CACHE_DIR", cache_dir)],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(stale.exists(), "--dry-run removed a temp file");

    let out = common::run_bottle(&["gc"], cache.path(), &[("BOTTLE_CACHE_DIR", cache_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!stale.exists(), "stale temp file survived gc");
    assert!(
        fresh.exists(),
        "gc removed a temp file that may still be written"
    );
    assert!(
        out.stderr.contains("removed 1 stale temp file"),
        "{}",
        out.stderr
    );
}
