//! Sharing a locked bottle between machines, against real registries: the
//! locked `hello` pushed to a second registry keeps its digest and every
//! blob fetched back from there verifies; exported and imported into a third
//! registry from an empty cache (another machine) it keeps its digest too;
//! two exports are byte-identical; a damaged archive, a tag and an
//! unreachable registry are refused with the documented exit codes.

mod common;
mod lock_support;

use std::path::Path;

use bottle::oci::{BlobStore, BuiltImage, Platform};
use bottle::progress::Progress;
use bottle::registry::RegistryClient;
use lock_support::{Out, Project, Variation, digest_of};

fn registries(n: usize) -> Option<Vec<common::Registry>> {
    if !common::require_busybox() {
        return None;
    }
    (0..n).map(|_| common::Registry::start()).collect()
}

/// Run `bottle` as if on another machine: its own empty cache and HOME, no
/// project, cwd `dir`.
fn elsewhere(args: &[&str], dir: &Path, cache: &Path, registry: &str) -> Out {
    let o = common::run_bottle(
        args,
        dir,
        &[
            ("BOTTLE_CACHE_DIR", cache.to_str().unwrap()),
            ("HOME", cache.to_str().unwrap()),
            ("BOTTLE_REGISTRY", registry),
        ],
    );
    Out {
        code: o.code,
        stdout: o.stdout,
        stderr: o.stderr,
    }
}

/// Pull `registry/repo@digest` into a fresh store (every blob hashed by the
/// pull), re-verify every blob, and return the manifest and config bytes.
fn fetch_back(registry: &str, repo: &str, digest: &str) -> (Vec<u8>, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pulled = rt
        .block_on(async {
            RegistryClient::new(registry)
                .unwrap()
                .pull(
                    repo,
                    digest,
                    &Platform::default(),
                    &store,
                    &Progress::hidden(),
                )
                .await
        })
        .unwrap_or_else(|e| panic!("pull {registry}/{repo}@{digest}: {e}"));
    assert_eq!(pulled.manifest_digest, digest);
    let image = BuiltImage::from_store(digest, &store).unwrap();
    store.verify(digest).unwrap();
    store.verify(&image.config_digest).unwrap();
    assert!(!image.layers.is_empty());
    for l in &image.layers {
        store.verify(&l.digest).unwrap();
    }
    (image.manifest, image.config)
}

fn manifest_exists(registry: &str, repo: &str, digest: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bottle::registry::manifest_exists(registry, repo, digest))
        .unwrap()
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("--json: {e}: {out:?}"))
}

/// Offset and length of the data of `blobs/sha256/<hex>` in a tar file.
fn blob_span(archive: &[u8], digest: &str) -> (usize, usize) {
    let want = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut ar = tar::Archive::new(archive);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_str() == Some(want.as_str()) {
            return (e.raw_file_position() as usize, e.size() as usize);
        }
    }
    panic!("{want} not in the archive");
}

#[test]
fn a_locked_bottle_moves_between_registries_and_machines_by_digest() {
    let Some(regs) = registries(3) else { return };
    let (a, b, c) = (regs[0].host(), regs[1].host(), regs[2].host());
    let p = Project::new(&["hello"], Variation::default());

    let lock = p.bottle(&["lock", "hello"], Some(&a), &[]);
    assert_eq!(lock.code, 0, "{lock:?}");
    let digest = digest_of(&lock);
    let (manifest, config) = fetch_back(&a, "bottle/hello", &digest);

    // push: same digest on the second registry, every blob verifies there.
    let to = format!("{b}/team/hello");
    let push = p.bottle(&["push", "hello", "--to", &to, "--json"], Some(&a), &[]);
    assert_eq!(push.code, 0, "{push:?}");
    let v = json(&push);
    assert_eq!(v["reference"], format!("{to}@{digest}"));
    assert!(v["push"]["blobs_uploaded"].as_u64().unwrap() >= 2, "{v}");
    let (m2, c2) = fetch_back(&b, "team/hello", &digest);
    assert_eq!(m2, manifest, "the manifest bytes changed on the way");
    assert_eq!(c2, config);

    // Again: everything is there already, nothing is uploaded.
    let again = p.bottle(&["push", "hello", "--to", &to, "--json"], Some(&a), &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let v = json(&again);
    assert_eq!(v["push"]["blobs_uploaded"], 0, "{v}");
    assert!(v["push"]["blobs_skipped"].as_u64().unwrap() >= 2, "{v}");

    // From a machine with an empty cache and a full reference: the image is
    // pulled from the source registry (verified) and copied.
    let other = tempfile::tempdir().unwrap();
    let cache2 = tempfile::tempdir().unwrap();
    let full = format!("{a}/bottle/hello@{digest}");
    let to2 = format!("{b}/other/hello");
    let o = elsewhere(
        &["push", &full, "--to", &to2],
        other.path(),
        cache2.path(),
        &a,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), format!("{to2}@{digest}"));
    assert_eq!(fetch_back(&b, "other/hello", &digest).0, manifest);

    // export twice: byte-identical; an export from the registry (empty
    // cache, agent@digest form) is byte-identical too.
    let out = tempfile::tempdir().unwrap();
    let f1 = out.path().join("one.tar");
    let f2 = out.path().join("two.tar");
    let f3 = out.path().join("three.tar");
    for f in [&f1, &f2] {
        let e = p.bottle(
            &["export", "hello", "-o", f.to_str().unwrap()],
            Some(&a),
            &[],
        );
        assert_eq!(e.code, 0, "{e:?}");
        assert_eq!(e.stdout.trim(), format!("{digest} {}", f.display()));
    }
    let cache3 = tempfile::tempdir().unwrap();
    let e = elsewhere(
        &[
            "export",
            &format!("hello@{digest}"),
            "-o",
            f3.to_str().unwrap(),
            "--json",
        ],
        other.path(),
        cache3.path(),
        &a,
    );
    assert_eq!(e.code, 0, "{e:?}");
    assert_eq!(json(&e)["manifest_digest"], digest.as_str());
    let bytes = std::fs::read(&f1).unwrap();
    assert!(
        bytes == std::fs::read(&f2).unwrap(),
        "two exports of {digest} differ"
    );
    assert!(
        bytes == std::fs::read(&f3).unwrap(),
        "an export pulled from the registry differs from one from the blob store"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f1).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "archive mode {mode:o}");
    }
    // No temp file is left beside the archive.
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // import on "another machine" (empty cache) into a third registry: the
    // default repository comes from the image's policy label.
    let cache4 = tempfile::tempdir().unwrap();
    let imp = elsewhere(
        &["import", f1.to_str().unwrap()],
        other.path(),
        cache4.path(),
        &c,
    );
    assert_eq!(imp.code, 0, "{imp:?}");
    assert_eq!(imp.stdout.trim(), format!("{c}/bottle/hello@{digest}"));
    let (m3, c3) = fetch_back(&c, "bottle/hello", &digest);
    assert_eq!(m3, manifest);
    assert_eq!(c3, config);

    // A damaged archive: one byte flipped in a layer → exit 2, file named,
    // nothing pushed, even where the store already holds that layer.
    let layer = BuiltImage::from_store(
        &digest,
        &BlobStore::open(cache4.path().join("oci")).unwrap(),
    )
    .unwrap()
    .layers[0]
        .digest
        .clone();
    let (off, len) = blob_span(&bytes, &layer);
    let mut bad = bytes.clone();
    bad[off + len / 2] ^= 0x01;
    let bad_file = out.path().join("tampered.tar");
    std::fs::write(&bad_file, &bad).unwrap();
    let bad_to = format!("{c}/tampered/hello");
    for cache in [tempfile::tempdir().unwrap(), cache4] {
        let o = elsewhere(
            &["import", bad_file.to_str().unwrap(), "--to", &bad_to],
            other.path(),
            cache.path(),
            &c,
        );
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("tampered.tar"), "{o:?}");
        assert!(o.stderr.contains(&layer), "names the blob: {o:?}");
        assert!(o.stdout.is_empty(), "{o:?}");
    }
    assert!(!manifest_exists(&c, "tampered/hello", &digest));

    // A truncated archive (cut inside a blob) → exit 2 as well.
    let cut_file = out.path().join("cut.tar");
    std::fs::write(&cut_file, &bytes[..off + len / 2]).unwrap();
    let o = elsewhere(
        &["import", cut_file.to_str().unwrap(), "--to", &bad_to],
        other.path(),
        tempfile::tempdir().unwrap().path(),
        &c,
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("cut.tar"), "{o:?}");
    assert!(!manifest_exists(&c, "tampered/hello", &digest));
}

#[test]
fn tags_and_bad_destinations_are_refused_and_unreachable_registries_are_exit_3() {
    let Some(regs) = registries(1) else { return };
    let a = regs[0].host();
    let p = Project::new(&["hello"], Variation::default());
    let lock = p.bottle(&["lock", "hello"], Some(&a), &[]);
    assert_eq!(lock.code, 0, "{lock:?}");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.tar");
    let file = file.to_str().unwrap();

    for args in [
        vec!["push", "hello:latest", "--to", "localhost:5999/x/hello"],
        vec![
            "push",
            "localhost:5000/bottle/hello:v1",
            "--to",
            "localhost:5999/x",
        ],
        vec!["export", "hello:latest", "-o", file],
        vec!["push", "hello", "--to", "localhost:5999/x/hello:v1"],
        vec!["push", "hello", "--to", "x/hello"],
        vec!["import", file, "--to", "localhost:5999/x:v1"],
    ] {
        let o = p.bottle(&args, Some(&a), &[]);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
        assert!(o.stderr.contains("tag") || o.stderr.contains("registry host"));
    }
    assert!(!Path::new(file).exists());

    // Nothing listens on port 9 of loopback (discard): exit 3, naming it.
    let o = p.bottle(
        &["push", "hello", "--to", "127.0.0.1:9/x/hello"],
        Some(&a),
        &[],
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("127.0.0.1:9"), "{o:?}");

    let e = p.bottle(&["export", "hello", "-o", file], Some(&a), &[]);
    assert_eq!(e.code, 0, "{e:?}");
    let o = p.bottle(&["import", file], Some("127.0.0.1:9"), &[]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("127.0.0.1:9"), "{o:?}");

    // A missing archive is bad input naming the file.
    let missing = out.path().join("missing.tar");
    let o = p.bottle(&["import", missing.to_str().unwrap()], Some(&a), &[]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("missing.tar"), "{o:?}");

    // An agent without a lockfile is bad input that says what to run.
    let o = p.bottle(&["export", "nosuch", "-o", file], Some(&a), &[]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("bottle lock nosuch"), "{o:?}");
}
