//! A corrupt blob in the local store is never used: flip one byte of a
//! layer in the store and `check`, `lock`, `export` and `push` each notice
//! it, remove it, and build or fetch it anew (or fail naming it when they
//! cannot), leaving a store whose every blob hashes to its name.

mod common;
mod lock_support;

use std::fs;
use std::path::PathBuf;

use lock_support::{Project, Variation};
use sha2::{Digest as _, Sha256};

fn blob_path(p: &Project, digest: &str) -> PathBuf {
    p.cache
        .path()
        .join("oci/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn sha256_file(path: &std::path::Path) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(fs::read(path).unwrap()))
    )
}

/// The digest of the locked image's layer called `name`.
fn layer(p: &Project, name: &str) -> String {
    let lock = lock_support::lock_json(p, "hello");
    lock["image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {lock}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Flip one byte in the middle of a stored blob (same size, other hash).
fn flip_byte(p: &Project, digest: &str) {
    let path = blob_path(p, digest);
    let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_ne!(sha256_file(&path), digest);
}

fn warning(p: &Project, digest: &str, what: &str) -> String {
    format!(
        "warning: removed corrupt blob {digest} ({what}) from the blob store at {}",
        p.cache.path().join("oci").display()
    )
}

#[test]
fn check_rebuilds_a_corrupt_cached_layer_instead_of_trusting_it() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let first = p.bottle(&["check", "hello"], None, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let tools = layer(&p, "tools");
    flip_byte(&p, &tools);

    let out = p.bottle(&["check", "hello"], None, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&warning(&p, &tools, "cached layer")),
        "{}",
        out.stderr
    );
    // Rebuilt in place: the store holds the right bytes again.
    assert_eq!(sha256_file(&blob_path(&p, &tools)), tools);
    // And nothing more to say the next time.
    let again = p.bottle(&["check", "hello"], None, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stderr.contains("corrupt"), "{}", again.stderr);
}

#[test]
fn lock_with_a_new_input_rebuilds_a_corrupt_layer() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let host = reg.host();
    let first = p.bottle(&["lock", "hello"], Some(&host), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let tools = layer(&p, "tools");
    flip_byte(&p, &tools);

    p.write("agents/hello/prompt.md", "a new prompt\n");
    let out = p.bottle(&["lock", "hello"], Some(&host), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&warning(&p, &tools, "cached layer")),
        "{}",
        out.stderr
    );
    assert_eq!(
        layer(&p, "tools"),
        tools,
        "the rebuilt layer changed digest"
    );
    assert_eq!(sha256_file(&blob_path(&p, &tools)), tools);
}

#[test]
fn export_fetches_a_corrupt_blob_again_or_fails_naming_it() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let host = reg.host();
    let first = p.bottle(&["lock", "hello"], Some(&host), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let tools = layer(&p, "tools");
    let out_dir = tempfile::tempdir().unwrap();
    let tar = out_dir.path().join("hello.tar");
    let tar_s = tar.to_str().unwrap();

    // Registry up: the blob is fetched again and the archive is right.
    flip_byte(&p, &tools);
    let out = p.bottle(&["export", "hello", "-o", tar_s], Some(&host), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&warning(&p, &tools, "image blob")),
        "{}",
        out.stderr
    );
    assert_eq!(sha256_file(&blob_path(&p, &tools)), tools);
    let in_tar = archive_blob(&tar, &tools);
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&in_tar))),
        tools,
        "the archive holds the corrupt bytes"
    );
    fs::remove_file(&tar).unwrap();

    // Registry down, but the agent's lockfile is here: the image is
    // rebuilt from it, the same bytes.
    flip_byte(&p, &tools);
    let out = p.bottle(&["export", "hello", "-o", tar_s], None, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&warning(&p, &tools, "image blob")),
        "{}",
        out.stderr
    );
    assert_eq!(sha256_file(&blob_path(&p, &tools)), tools);
    fs::remove_file(&tar).unwrap();

    // Registry down and a bare registry reference (nothing to rebuild it
    // from): exit 1 naming the blob; no archive, no temp file, and the
    // corrupt blob is gone from the store.
    flip_byte(&p, &tools);
    let manifest = lock_support::lock_json(&p, "hello")["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bare = format!("127.0.0.1:9/bottle/hello@{manifest}");
    let out = p.bottle(&["export", &bare, "-o", tar_s], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let store = p.cache.path().join("oci");
    assert!(
        out.stderr.contains(&format!(
            "error: blob {tools} (image blob) in the blob store at {} is corrupt: its bytes hash to sha256:",
            store.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "it was removed from the store, so running the command again builds or fetches it anew"
        ),
        "{}",
        out.stderr
    );
    let left: Vec<_> = fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "export left {left:?}");
    assert!(!blob_path(&p, &tools).exists());
}

#[test]
fn push_fetches_a_corrupt_blob_again_from_the_source() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let host = reg.host();
    let first = p.bottle(&["lock", "hello"], Some(&host), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let tools = layer(&p, "tools");
    flip_byte(&p, &tools);

    // Another registry, so the layer must be uploaded from the store (a
    // mount within one registry would never read it).
    let Some(other) = common::Registry::start() else {
        return;
    };
    let to = format!("{}/team/copy", other.host());
    let out = p.bottle(&["push", "hello", "--to", &to], Some(&host), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("warning: removed corrupt blob {tools} (")),
        "{}",
        out.stderr
    );
    assert_eq!(sha256_file(&blob_path(&p, &tools)), tools);
    let hex = tools.trim_start_matches("sha256:");
    assert_eq!(
        other.get_status(&format!("/v2/team/copy/blobs/sha256:{hex}")),
        Some(200)
    );
}

/// The bytes of `blobs/sha256/<hex>` inside an exported archive.
fn archive_blob(tar: &std::path::Path, digest: &str) -> Vec<u8> {
    let want = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut ar = ::tar::Archive::new(fs::File::open(tar).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == want {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("{want} is not in {}", tar.display());
}
