//! A process killed while writing a blob never leaves a corrupt blob under a
//! digest name: only a `.tmp-*` file named for its dead owner, which `gc` clears, and
//! the store keeps working.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use bottle::oci::BlobStore;
use bottle::oci::digest::sha256_digest;

#[test]
fn a_killed_writer_leaves_no_blob_under_a_digest_name() {
    // Child mode: this same test, re-run by the parent below, writes one
    // blob forever until it is SIGKILLed.
    if let Some(dir) = std::env::var_os("BOTTLE_STORE_CHILD") {
        let store = BlobStore::open(dir).unwrap();
        let mut w = store.writer().unwrap();
        let chunk = vec![b'x'; 256 * 1024];
        loop {
            w.write_all(&chunk).unwrap();
            w.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let blobs = dir.path().join("blobs").join("sha256");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_writer_leaves_no_blob_under_a_digest_name",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BOTTLE_STORE_CHILD", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the child has written something, then SIGKILL it mid-blob.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let big = std::fs::read_dir(&blobs)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false));
        if big {
            break;
        }
        assert!(Instant::now() < deadline, "child never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let mut temps = 0;
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            temps += 1;
        } else {
            // Anything under a digest name must hash to it.
            let digest = format!("sha256:{name}");
            store.verify(&digest).unwrap();
        }
    }
    assert_eq!(temps, 1, "the killed writer's temp file is the only trace");
    // Its name says its owner is gone, so `gc` lists and removes it.
    let places: Vec<_> = store
        .temp_dirs()
        .into_iter()
        .map(|d| (d, bottle::oci::store::TEMP_PREFIX))
        .collect();
    let stale = bottle::runner::gc::stale_temps(&places);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].owner_pid, Some(child.id()));
    let (removed, failed) = bottle::runner::gc::remove_temps(stale);
    assert_eq!((removed.len(), failed.len()), (1, 0));
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);

    // The store still works.
    let d = store.put(b"after the crash").unwrap();
    assert_eq!(d, sha256_digest(b"after the crash"));
    store.verify(&d).unwrap();
}
