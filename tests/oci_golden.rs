//! Golden digests: the only real proof of determinism. A fixed spec must
//! build to a pinned manifest digest, in any process umask, TZ or cwd, and
//! whatever the source files' on-disk mtimes and modes are.
//!
//! If the layer format changes ON PURPOSE, run `scripts/regen-golden` and
//! say why in the commit message.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use bottle::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};
use bottle::oci::{BlobStore, build};

/// Pinned by `scripts/regen-golden`.
const GOLDEN_MANIFEST: &str =
    "sha256:a069eaffa182f40b5abb5f66c29afd624fb4e1662b43a846318a2cdd1e973922";

fn entry(path: &str, mode: u32, uid: u64, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        mode,
        uid,
        gid: uid,
        kind,
    }
}

/// The fixed spec. `src` holds one file read from disk (`tool.sh`).
fn golden_spec(src: &Path) -> ImageSpec {
    let tool = src.join("tool.sh");
    std::fs::write(&tool, b"#!/bin/sh\necho golden\n").unwrap();
    // On-disk metadata that must NOT matter.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        "dev.bottle.policy".to_string(),
        r#"{"egress":[]}"#.to_string(),
    );
    ImageSpec {
        base: Base::Scratch,
        layers: vec![
            LayerSpec {
                name: "base".into(),
                entries: vec![
                    entry(
                        "etc/motd",
                        0o600,
                        0,
                        EntryKind::File(FileSource::Bytes(b"hi\n".to_vec())),
                    ),
                    entry(
                        "usr/local/bin/tool",
                        0o700,
                        0,
                        EntryKind::File(FileSource::Path(tool)),
                    ),
                    entry(
                        "usr/bin/tool",
                        0o777,
                        0,
                        EntryKind::Symlink("../local/bin/tool".into()),
                    ),
                ],
            },
            LayerSpec {
                name: "skill:review".into(),
                entries: vec![
                    entry("home/agent", 0o700, 1000, EntryKind::Dir),
                    entry(
                        "home/agent/.claude/skills/review/SKILL.md",
                        0o644,
                        1000,
                        EntryKind::File(FileSource::Bytes(
                            b"---\nname: review\ndescription: d\n---\n".to_vec(),
                        )),
                    ),
                ],
            },
        ],
        config: ConfigSpec {
            user: "1000".into(),
            env: vec![
                "PATH=/usr/local/bin:/usr/bin".into(),
                "HOME=/home/agent".into(),
            ],
            entrypoint: vec!["/usr/bin/tool".into()],
            cmd: vec![],
            working_dir: "/home/agent".into(),
            labels,
        },
        mtime: 0,
    }
}

fn build_digest() -> String {
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    build(&golden_spec(src.path()), &store)
        .unwrap()
        .manifest_digest
}

#[test]
fn fixed_spec_builds_to_pinned_digest() {
    let got = build_digest();
    if std::env::var_os("BOTTLE_REGEN_GOLDEN").is_some() {
        println!("\nGOLDEN={got}");
        return;
    }
    assert_eq!(
        got, GOLDEN_MANIFEST,
        "the golden image digest changed; if that is intended, run scripts/regen-golden"
    );
}

/// Re-runs this same test in a child process (this test binary, filtered
/// to this test) under another umask, TZ and cwd; the child only builds and
/// prints its digest.
#[test]
fn same_digest_under_other_umask_tz_and_cwd() {
    if std::env::var_os("BOTTLE_GOLDEN_CHILD").is_some() {
        println!("\nGOLDEN={}", build_digest());
        return;
    }
    let here = build_digest();
    let cwd = tempfile::tempdir().unwrap();
    for (umask, tz) in [(0o000, "Pacific/Kiritimati"), (0o077, "America/St_Johns")] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "same_digest_under_other_umask_tz_and_cwd",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BOTTLE_GOLDEN_CHILD", "1")
        .env("TZ", tz)
        .current_dir(cwd.path());
        // SAFETY: umask is async-signal-safe and touches no Rust state.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("GOLDEN="))
            .unwrap_or_else(|| panic!("child printed no digest: {stdout}"));
        assert_eq!(line, here, "umask {umask:o} TZ {tz}");
    }
}

#[test]
fn one_byte_of_one_file_changes_exactly_one_layer() {
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let spec = golden_spec(src.path());
    let before = build(&spec, &store).unwrap();
    assert_eq!(before.manifest_digest, GOLDEN_MANIFEST);

    // The file's mtime on disk does not matter...
    let tool = src.path().join("tool.sh");
    let f = std::fs::File::options().write(true).open(&tool).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567))
        .unwrap();
    drop(f);
    let touched = build(&spec, &store).unwrap();
    assert_eq!(touched.manifest_digest, before.manifest_digest);

    // ...one byte of its content does, in exactly one layer.
    std::fs::write(&tool, b"#!/bin/sh\necho golDen\n").unwrap();
    let after = build(&spec, &store).unwrap();
    assert_ne!(after.manifest_digest, before.manifest_digest);
    let changed: Vec<&str> = before
        .layers
        .iter()
        .zip(&after.layers)
        .filter(|(a, b)| a.digest != b.digest)
        .map(|(a, _)| a.name.as_str())
        .collect();
    assert_eq!(changed, vec!["base"]);
    let files = bottle::oci::diff::diff_layer_blobs(
        &store,
        &before.layers[0].digest,
        &after.layers[0].digest,
    )
    .unwrap();
    assert_eq!(
        files,
        vec!["usr/local/bin/tool: content differs (22 -> 22 bytes)".to_string()]
    );
}
