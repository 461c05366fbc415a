//! Local-first images: with no registry, `lock` builds into the local store
//! and `run` gets the exact digest into the engine by the cheapest sound
//! path (engine → store → registry → realized from the lockfile); a named
//! registry that is down is exit 3 with the lockfile untouched; `--offline`
//! never touches the network; a no-op `lock` sees a registry that lost one
//! layer and pushes it again; SIGINT during a pull stops with a message and
//! leaves nothing behind.

mod common;
mod lock_support;
mod run_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lock_support::{Project, Variation, digest_of, lock_json};

/// An empty `BOTTLE_REGISTRY`: no registry configured.
const NONE: Option<&str> = Some("");

/// A copy of `hello` under a unique agent name with a unique prompt, so its
/// image and its run objects are this test's alone.
fn unique_agent(p: &Project, name: &str) -> String {
    let src = lock_support::repo().join("agents/hello");
    lock_support::copy_tree(
        &src,
        &p.path(&format!("agents/{name}")),
        Variation::default(),
    );
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let prompt = format!("local-first prompt {nonce}");
    p.write(&format!("agents/{name}/prompt.md"), format!("{prompt}\n"));
    prompt
}

#[test]
fn lock_without_a_registry_stores_locally_and_a_named_registry_that_is_down_is_exit_3() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let committed = lock_json(&p, "hello")["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(p.path("lockfiles/hello.lock.json")).unwrap();

    let out = p.bottle(&["lock", "hello"], NONE, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(digest_of(&out), committed, "{out:?}");
    assert!(p.path("lockfiles/hello.lock.json").is_file());
    assert!(
        out.stderr.contains("bottle push hello"),
        "says how to share: {out:?}"
    );
    let store = p.cache.path().join("oci/blobs/sha256");
    assert!(
        store
            .join(committed.trim_start_matches("sha256:"))
            .is_file()
    );

    // A no-op lock with no registry confirms the store and writes nothing.
    let again = p.bottle(&["lock", "hello"], NONE, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("up to date"), "{again:?}");

    // A registry that is named and down: exit 3, lockfile untouched, both
    // for the no-op and for a real change.
    let before = p.read("lockfiles/hello.lock.json");
    let down = p.bottle(&["lock", "hello"], Some("127.0.0.1:9"), &[]);
    assert_eq!(down.code, 3, "{down:?}");
    p.write("agents/hello/prompt.md", "changed\n");
    let down = p.bottle(&["lock", "hello"], Some("127.0.0.1:9"), &[]);
    assert_eq!(down.code, 3, "{down:?}");
    assert!(down.stderr.contains("127.0.0.1:9"), "{down:?}");
    assert_eq!(p.read("lockfiles/hello.lock.json"), before);
}

/// A loopback listener that counts connections and answers nothing.
fn recorder() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

#[test]
fn lock_offline_never_touches_the_registry() {
    if !common::require_busybox() {
        return;
    }
    let (addr, seen) = recorder();
    let p = Project::new(&["hello"], Variation::default());
    // Warm the download cache online (no registry): offline needs it.
    let warm = p.bottle(&["lock", "hello"], NONE, &[]);
    assert_eq!(warm.code, 0, "{warm:?}");
    p.write("agents/hello/prompt.md", "offline\n");
    // A rebuild (the prompt changed) and then a no-op, both offline.
    let out = p.bottle(&["lock", "--offline", "hello"], Some(&addr), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("--offline: not pushed"), "{out:?}");
    let noop = p.bottle(&["lock", "--offline", "hello"], Some(&addr), &[]);
    assert_eq!(noop.code, 0, "{noop:?}");
    assert!(noop.stderr.contains("not checked"), "{noop:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "--offline connected to {addr}"
    );
    // The recorder does see a lock that is allowed online (so the zero above
    // means something).
    let online = p.bottle(&["lock", "hello"], Some(&addr), &[]);
    assert_eq!(online.code, 3, "{online:?}");
    assert!(seen.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_noop_lock_sees_a_registry_that_lost_one_layer_and_pushes_it_again() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let out = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let layer = lock_json(&p, "hello")["image"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = layer.trim_start_matches("sha256:");
    let url = format!("/v2/bottle/hello/blobs/{layer}");
    let lose = || {
        let data = reg
            .storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex);
        std::fs::remove_dir_all(&data).unwrap();
        assert_eq!(reg.get_status(&url), Some(404), "the layer is gone");
    };
    lose();
    let fixed = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(fixed.code, 0, "{fixed:?}");
    assert!(fixed.stderr.contains("had lost"), "{fixed:?}");
    assert!(fixed.stderr.contains(&layer), "names the blob: {fixed:?}");
    assert_eq!(reg.get_status(&url), Some(200), "{}", reg.log());

    // Lost from the registry and from the store: rebuilt, pushed, same digest.
    lose();
    std::fs::remove_dir_all(p.cache.path().join("oci")).unwrap();
    let rebuilt = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(rebuilt.code, 0, "{rebuilt:?}");
    assert!(rebuilt.stderr.contains("rebuilding"), "{rebuilt:?}");
    assert_eq!(digest_of(&rebuilt), digest_of(&out));
    assert_eq!(reg.get_status(&url), Some(200));
}

/// Remove the engine's copy of a test image (by its unique tag).
async fn remove_image(docker: &bollard::Docker, tag: &str) {
    let _ = docker
        .remove_image(
            tag,
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}

#[tokio::test]
async fn run_gets_the_locked_digest_by_the_cheapest_sound_path() {
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let agent = format!("lf{}", std::process::id());
    let p = Project::new(&[], Variation::default());
    let prompt = unique_agent(&p, &agent);
    let _cleanup = run_common::Cleanup {
        agent: agent.clone(),
        extra_containers: Vec::new(),
        extra_networks: Vec::new(),
    };
    let locked = p.bottle(&["lock", &agent], NONE, &[]);
    assert_eq!(locked.code, 0, "{locked:?}");
    let lock = lock_json(&p, &agent);
    let digest = lock["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config = lock["image"]["config_digest"].as_str().unwrap().to_string();
    let tag = format!(
        "bottle/{agent}:sha256-{}",
        digest.trim_start_matches("sha256:")
    );
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let tag = self.0.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    if let Some(d) = common::docker().await {
                        remove_image(&d, &tag).await;
                    }
                });
            })
            .join();
        }
    }
    let _untag = Untag(tag.clone());
    let unpatched = [("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1")];
    let run = |expect: &str| {
        let o = p.bottle(
            &[
                "run",
                "--yes",
                &agent,
                "--",
                "cat",
                "/home/agent/.bottle/prompt.md",
            ],
            NONE,
            &unpatched,
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains(&prompt), "{o:?}");
        assert!(o.stderr.contains(expect), "expected `{expect}`: {o:?}");
        let short = &digest[..19];
        assert!(
            o.stderr.contains(short),
            "the preflight names {short}: {o:?}"
        );
    };
    let nothing_left = || async {
        let l =
            run_common::wait_for(&docker, &agent, Duration::from_secs(10), |l| l.is_empty()).await;
        assert!(l.is_empty(), "left behind: {l:?}");
    };

    // Empty engine, image in the store (from `lock`).
    run("from the local store");
    let id = docker.inspect_image(&tag).await.unwrap().id.unwrap();
    assert_eq!(
        id, config,
        "the engine's image ID is the locked config digest"
    );
    nothing_left().await;
    // The engine has it now.
    run("already in the engine");
    nothing_left().await;
    // Engine copy removed and store emptied: realized from the lockfile.
    remove_image(&docker, &tag).await;
    std::fs::remove_dir_all(p.cache.path().join("oci")).unwrap();
    run("realized from the lockfile");
    nothing_left().await;

    // One pin changed by hand: exit 1 naming that input, nothing started.
    remove_image(&docker, &tag).await;
    std::fs::remove_dir_all(p.cache.path().join("oci")).unwrap();
    // (hello's busybox is a Debian package pin since its base is built
    // from packages.)
    p.edit_json(&format!("lockfiles/{agent}.lock.json"), |v| {
        v["packages"]["packages"][0]["sha256"] = "0".repeat(64).into();
    });
    let o = p.bottle(&["run", "--yes", &agent, "--", "true"], NONE, &unpatched);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("input `packages`"), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        docker.inspect_image(&tag).await.is_err(),
        "nothing was loaded"
    );
    nothing_left().await;
}

/// A fake registry that serves a manifest and then trickles a big layer,
/// so a pull is surely in progress when the signal comes.
fn slow_registry(manifest: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let manifest = manifest.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                if path.contains("/manifests/") {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
                        manifest.len()
                    );
                    let _ = s.write_all(&manifest);
                } else if path.contains("/blobs/") {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100000000\r\n\r\n"
                    );
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline && s.write_all(&[0u8; 1024]).is_ok() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                } else {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn sigint_during_a_pull_stops_with_a_message_and_leaves_nothing() {
    let layer = format!("sha256:{}", "1".repeat(64));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":100000000}},"layers":[]}}"#
    );
    let md = bottle::oci::digest::sha256_digest(manifest.as_bytes());
    let addr = slow_registry(manifest.into_bytes());
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.tar");
    let errf = out.path().join("err");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["export", &format!("{addr}/x/y@{md}"), "-o"])
        .arg(&file)
        .env("BOTTLE_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap();
    // Wait until the blob download has started (a temp file in the store).
    let blobs = cache.path().join("oci/blobs/sha256");
    let temps = || -> Vec<String> {
        std::fs::read_dir(&blobs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while temps().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !temps().is_empty(),
        "the pull never started: {}",
        std::fs::read_to_string(&errf).unwrap_or_default()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&errf).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by SIGINT"), "{err}");
    assert!(temps().is_empty(), "partial download left: {:?}", temps());
    assert!(!file.exists());
}

#[test]
fn export_and_import_work_from_the_local_store_without_a_registry() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let digest = lock_json(&p, "hello")["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("hello.tar");
    let file_s = file.to_str().unwrap();
    // Empty store, no registry: export realizes the image from the lockfile.
    let e = p.bottle(&["export", "hello", "-o", file_s], NONE, &[]);
    assert_eq!(e.code, 0, "{e:?}");
    assert!(e.stdout.starts_with(&digest), "{e:?}");
    // Import into another machine's empty store: kept there, no registry.
    let other = Project::new(&[], Variation::default());
    let i = other.bottle(&["import", file_s], NONE, &[]);
    assert_eq!(i.code, 0, "{i:?}");
    assert_eq!(i.stdout.trim(), format!("hello@{digest}"), "{i:?}");
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        other
            .cache
            .path()
            .join("oci/blobs/sha256")
            .join(hex)
            .is_file()
    );
    // And export from that store by digest, with no lockfile at all.
    let again = out.path().join("again.tar");
    let x = other.bottle(
        &[
            "export",
            &format!("hello@{digest}"),
            "-o",
            again.to_str().unwrap(),
        ],
        NONE,
        &[],
    );
    assert_eq!(x.code, 0, "{x:?}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // A digest nothing has, with nowhere to get it: exit 3 saying what to do.
    let none = format!("hello@sha256:{}", "0".repeat(64));
    let n = other.bottle(&["export", &none, "-o", again.to_str().unwrap()], NONE, &[]);
    assert_eq!(n.code, 3, "{n:?}");
    assert!(n.stderr.contains("--registry"), "{n:?}");
}

#[tokio::test]
async fn a_fresh_copy_runs_hello_at_its_committed_digest() {
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let lock = lock_json(&p, "hello");
    let digest = lock["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config = lock["image"]["config_digest"].as_str().unwrap().to_string();
    let tag = format!(
        "bottle/hello:sha256-{}",
        digest.trim_start_matches("sha256:")
    );
    let had_tag = docker.inspect_image(&tag).await.is_ok();
    let o = p.bottle(
        &[
            "run",
            "--yes",
            "hello",
            "--",
            "cat",
            "/home/agent/.bottle/prompt.md",
        ],
        NONE,
        &[("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1")],
    );
    // Other tests may hold the same image, so any path is fine here; the
    // image the engine ran has the locked config digest either way.
    let ran_id = docker.inspect_image(&config).await.map(|i| i.id);
    if !had_tag {
        // Only our own tag, never by force: others may use the image.
        let _ = docker
            .remove_image(
                &tag,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    assert_eq!(o.code, 0, "{o:?}");
    let prompt = String::from_utf8(p.read("agents/hello/prompt.md")).unwrap();
    assert!(o.stdout.contains(prompt.trim()), "{o:?}");
    assert!(o.stderr.contains(&digest[..19]), "{o:?}");
    assert!(
        o.stderr.contains("image: "),
        "the preflight says how: {o:?}"
    );
    assert_eq!(ran_id.unwrap().as_deref(), Some(config.as_str()));
}
