//! Attacks on the trust chain, each against a small archive this test
//! writes and signs itself with a key it generates (served as `file://`).

use std::path::{Path, PathBuf};

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedSecretKey,
};
use pgp::types::Password;
use sha2::{Digest as _, Sha256};

use super::archive::{ensure_debs, layers, pin};
use super::deb::tests::make_deb;
use crate::error::{Classify, ExitKind};
use crate::lock::LockError;
use crate::lock::fetch::FetchCache;
use crate::manifest::{Archive, Packages};

fn key() -> SignedSecretKey {
    let mut p = SecretKeyParamsBuilder::default();
    p.key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id("test archive <archive@test.invalid>".into());
    let k = p.build().unwrap().generate(rand::thread_rng()).unwrap();
    k.sign(rand::thread_rng(), &Password::empty()).unwrap()
}

fn hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

struct Archive_ {
    dir: tempfile::TempDir,
    signer: SignedSecretKey,
    keyring: PathBuf,
}

impl Archive_ {
    /// An archive with suite `s`, package `t` (its .deb at pool/t.deb).
    fn new() -> Archive_ {
        let dir = tempfile::tempdir().unwrap();
        let signer = key();
        let keyring = dir.path().join("keyring.asc");
        let pubkey = signer.signed_public_key();
        std::fs::write(
            &keyring,
            pubkey.to_armored_string(ArmorOptions::default()).unwrap(),
        )
        .unwrap();
        let a = Archive_ {
            dir,
            signer,
            keyring,
        };
        let deb = make_deb(&[("./usr/bin/tool", b"x")], &[], "xz");
        a.write("pool/t.deb", &deb);
        a.publish(
            &deb,
            "Sat, 10 May 2025 09:04:05 UTC",
            "Fri, 01 Jan 2100 00:00:00 UTC",
            None,
        );
        a
    }

    fn write(&self, rel: &str, b: &[u8]) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Write the index for `deb` and an InRelease signed by `by` (else the
    /// archive's own key).
    fn publish(&self, deb: &[u8], date: &str, valid_until: &str, by: Option<&SignedSecretKey>) {
        let packages = format!(
            "Package: t\nVersion: 1\nArchitecture: amd64\nFilename: pool/t.deb\nSize: {}\nSHA256: {}\nDescription: test\n",
            deb.len(),
            hex(deb)
        );
        self.publish_suite("s", &packages, date, valid_until, by);
    }

    /// Write suite `suite` with the given `Packages` text, signed.
    fn publish_suite(
        &self,
        suite: &str,
        packages: &str,
        date: &str,
        valid_until: &str,
        by: Option<&SignedSecretKey>,
    ) {
        self.write(
            &format!("dists/{suite}/main/binary-amd64/Packages"),
            packages.as_bytes(),
        );
        let release = format!(
            "Suite: {suite}\nCodename: {suite}\nDate: {date}\nValid-Until: {valid_until}\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            hex(packages.as_bytes()),
            packages.len()
        );
        let k = by.unwrap_or(&self.signer);
        let msg = CleartextSignedMessage::sign(
            rand::thread_rng(),
            &release,
            &k.primary_key,
            &Password::empty(),
        )
        .unwrap();
        self.write(
            &format!("dists/{suite}/InRelease"),
            msg.to_armored_string(ArmorOptions::default())
                .unwrap()
                .as_bytes(),
        );
    }

    fn packages(&self) -> Packages {
        Packages {
            include: vec!["t".into()],
            arch: Some("amd64".into()),
            essential: false,
            archive: Some(Archive {
                uri: format!("file://{}", self.root().display()),
                suites: vec!["s".into()],
                components: vec!["main".into()],
                signed_by: self.keyring.display().to_string(),
            }),
            canonical: serde_json::json!({"include": ["t"]}),
        }
    }
}

async fn lock(
    a: &Archive_,
    cache: &FetchCache,
) -> Result<crate::lock::lockfile::LockedPackages, LockError> {
    pin(
        &a.packages(),
        "linux/amd64",
        None,
        false,
        cache,
        false,
        &mut Vec::new(),
    )
    .await
}

#[tokio::test]
async fn a_signed_archive_locks_and_builds() {
    let a = Archive_::new();
    let c = tempfile::tempdir().unwrap();
    let cache = FetchCache::open(c.path()).unwrap();
    let pins = lock(&a, &cache).await.unwrap();
    assert_eq!(pins.packages.len(), 1);
    assert_eq!(pins.packages[0].path, "pool/t.deb");
    assert_eq!(pins.suites[0].date, "Sat, 10 May 2025 09:04:05 UTC");
    let ls = layers(&pins, &cache, &[]).unwrap();
    assert!(
        ls.iter()
            .flat_map(|l| &l.entries)
            .any(|e| e.path == "usr/bin/tool")
    );
    // Unchanged request: the same pins, without reading the archive.
    std::fs::remove_dir_all(a.root().join("dists")).unwrap();
    let again = pin(
        &a.packages(),
        "linux/amd64",
        Some(&pins),
        false,
        &cache,
        true,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(again, pins);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let a = Archive_::new();
    let deb = std::fs::read(a.root().join("pool/t.deb")).unwrap();
    a.publish(
        &deb,
        "Sat, 10 May 2025 09:04:05 UTC",
        "Fri, 01 Jan 2100 00:00:00 UTC",
        Some(&key()),
    );
    let c = tempfile::tempdir().unwrap();
    let e = lock(&a, &FetchCache::open(c.path()).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("dists/s/InRelease") && msg.contains("signature refused"),
        "{msg}"
    );
    // A signed text edited after signing fails too.
    let p = a.root().join("dists/s/InRelease");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replace("Codename: s", "Codename: x");
    std::fs::write(&p, t).unwrap();
    let e = lock(&a, &FetchCache::open(c.path()).unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("signature refused"), "{e}");
}

#[tokio::test]
async fn an_index_that_differs_from_the_signed_hash_is_refused() {
    let a = Archive_::new();
    let p = a.root().join("dists/s/main/binary-amd64/Packages");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replace("Version: 1", "Version: 2");
    std::fs::write(&p, t).unwrap();
    let c = tempfile::tempdir().unwrap();
    let e = lock(&a, &FetchCache::open(c.path()).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LockError::FetchMismatch { .. }), "{msg}");
    assert!(
        msg.contains("main/binary-amd64/Packages") && msg.contains("InRelease"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_deb_that_differs_from_the_index_or_the_pin_is_refused() {
    let a = Archive_::new();
    let c = tempfile::tempdir().unwrap();
    let cache = FetchCache::open(c.path()).unwrap();
    let pins = lock(&a, &cache).await.unwrap();
    // Swap the .deb: a fresh lock (new cache) refuses it against the index.
    a.write(
        "pool/t.deb",
        &make_deb(&[("./usr/bin/tool", b"evil")], &[], "xz"),
    );
    let c2 = tempfile::tempdir().unwrap();
    let e = lock(&a, &FetchCache::open(c2.path()).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("pool/t.deb") && msg.contains("signed index s/main/binary-amd64/Packages"),
        "{msg}"
    );
    // A rebuild from the pins (nothing cached) refuses it against the pin.
    let c3 = tempfile::tempdir().unwrap();
    let e = ensure_debs(
        &a.packages(),
        &pins,
        &FetchCache::open(c3.path()).unwrap(),
        false,
        "lockfiles/x.lock.json",
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LockError::FetchMismatch { .. }), "{msg}");
    assert!(
        msg.contains("pool/t.deb") && msg.contains("lockfiles/x.lock.json"),
        "{msg}"
    );
    // Gone from the archive and not cached: exit 3 naming it.
    std::fs::remove_file(a.root().join("pool/t.deb")).unwrap();
    let e = ensure_debs(
        &a.packages(),
        &pins,
        &FetchCache::open(c3.path()).unwrap(),
        false,
        "l",
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_kind(), ExitKind::Environment, "{e}");
    assert!(e.to_string().contains("pool/t.deb"), "{e}");
    // Still cached from the first lock: the rebuild works offline.
    ensure_debs(&a.packages(), &pins, &cache, true, "l")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_expired_suite_is_refused() {
    let a = Archive_::new();
    let deb = std::fs::read(a.root().join("pool/t.deb")).unwrap();
    a.publish(
        &deb,
        "Sat, 10 May 2025 09:04:05 UTC",
        "Sat, 17 May 2025 09:04:05 UTC",
        None,
    );
    let c = tempfile::tempdir().unwrap();
    let e = lock(&a, &FetchCache::open(c.path()).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("expired") && msg.contains("dists/s/InRelease"),
        "{msg}"
    );
}

/// A suite that supplies no pinned package (Debian's -updates, re-signed
/// daily) is not recorded, so its new date does not change a fresh lock.
#[tokio::test]
async fn a_suite_that_supplied_nothing_is_not_in_the_pins() {
    let a = Archive_::new();
    let c = tempfile::tempdir().unwrap();
    let cache = FetchCache::open(c.path()).unwrap();
    let mut p = a.packages();
    p.archive.as_mut().unwrap().suites.push("u".into());
    let until = "Fri, 01 Jan 2100 00:00:00 UTC";
    let mut pins = Vec::new();
    let mut notes = Vec::new();
    for date in [
        "Sun, 11 May 2025 00:00:00 UTC",
        "Mon, 12 May 2025 00:00:00 UTC",
    ] {
        a.publish_suite("u", "", date, until, None);
        let got = pin(&p, "linux/amd64", None, false, &cache, false, &mut notes);
        pins.push(got.await.unwrap());
    }
    let suites: Vec<&str> = pins[0].suites.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(suites, ["s"]);
    assert_eq!(pins[0], pins[1]);
}
