//! Pins: plain `lock` keeps every pin unless the manifest changed it, a
//! changed download is an error naming the URL and both hashes, `--update`
//! re-resolves; a base image given by reference is pinned to its manifest
//! digest and its layers are reused; a pipelock agent cannot be locked
//! without the network.

mod common;
mod lock_support;

use lock_support::{Project, Variation, digest_of, lock_json};
use serde_json::json;

/// A project whose recipe fetches a file we control.
fn with_tool(p: &Project, tool: &std::path::Path) {
    std::fs::write(tool, b"#!/bin/sh\necho v1\n").unwrap();
    p.edit_json("images/busybox.json", |v| {
        v["fetch"] = json!([{"url": format!("file://{}", tool.display()), "dest": "/bin/tool", "mode": "0755"}]);
    });
    std::fs::remove_file(p.path("lockfiles/hello.lock.json")).unwrap();
}

fn tool_pin(p: &Project) -> String {
    let l = lock_json(p, "hello");
    l["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "fetch:/bin/tool")
        .unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn pins_hold_until_update_and_a_changed_download_is_named() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let src = tempfile::tempdir().unwrap();
    let tool = src.path().join("tool");
    with_tool(&p, &tool);

    let first = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let pin = tool_pin(&p);
    let lockfile = p.read("lockfiles/hello.lock.json");

    // The source changes; the pinned copy in the cache is what counts.
    std::fs::write(&tool, b"#!/bin/sh\necho v2\n").unwrap();
    let same = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(digest_of(&same), digest_of(&first));
    assert_eq!(p.read("lockfiles/hello.lock.json"), lockfile);

    // A no-op lock needs only the pins: no download, even with the cache gone.
    std::fs::remove_dir_all(p.cache.path().join("fetch")).unwrap();
    let noop = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(noop.code, 0, "{noop:?}");
    assert_eq!(digest_of(&noop), digest_of(&first));
    assert!(!noop.stderr.contains("fetching"), "{noop:?}");

    // Without the cached copy a rebuild checks the download against the pin.
    std::fs::remove_dir_all(p.cache.path().join("oci")).unwrap();
    let changed = p.bottle(&["check", "hello"], Some(&reg.host()), &[]);
    assert_eq!(changed.code, 2, "{changed:?}");
    assert!(
        changed
            .stderr
            .contains(&format!("file://{}", tool.display())),
        "{changed:?}"
    );
    assert!(
        changed.stderr.contains(pin.trim_start_matches("sha256:")),
        "{changed:?}"
    );
    assert!(
        changed.stderr.contains("lockfiles/hello.lock.json"),
        "{changed:?}"
    );

    // --update takes the new content.
    let updated = p.bottle(&["lock", "hello", "--update"], Some(&reg.host()), &[]);
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_ne!(tool_pin(&p), pin);
    assert_ne!(digest_of(&updated), digest_of(&first));
    let check = p.bottle(&["check", "hello"], Some(&reg.host()), &[]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn a_base_reference_is_pinned_by_digest_and_its_layers_reused() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let base = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(base.code, 0, "{base:?}");
    let hello = lock_json(&p, "hello");

    // A second agent whose image is the first one, by tag.
    lock_support::copy_tree(
        &p.path("agents/hello/skills"),
        &p.path("agents/derived/skills"),
        Variation::default(),
    );
    p.write(
        "agents/derived/bottle.json",
        serde_json::to_vec_pretty(&json!({
            "schema": 1,
            "image": format!("{}/bottle/hello:latest", reg.host()),
            "skills": ["skills/greet"],
            "sidecar": "builtin",
            "egress": {"allow": ["example.com"], "defaults": false},
        }))
        .unwrap(),
    );
    let out = p.bottle(&["lock", "derived"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let derived = lock_json(&p, "derived");
    assert_eq!(derived["base"]["digest"], hello["image"]["manifest_digest"]);
    assert_eq!(derived["base"]["platform"], "linux/amd64");
    let base_layers = hello["image"]["layers"].as_array().unwrap();
    let layers = derived["image"]["layers"].as_array().unwrap();
    for (b, d) in base_layers.iter().zip(layers) {
        assert_eq!(b["digest"], d["digest"], "base layer not reused");
    }
    assert_eq!(layers.len(), base_layers.len() + 2, "{layers:?}");

    // The tag moves; plain lock keeps the pin, --update follows the tag.
    p.write("agents/hello/prompt.md", "A different prompt.\n");
    let moved = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(moved.code, 0, "{moved:?}");
    let keep = p.bottle(&["lock", "derived"], Some(&reg.host()), &[]);
    assert_eq!(keep.code, 0, "{keep:?}");
    assert_eq!(digest_of(&keep), digest_of(&out));
    let upd = p.bottle(&["lock", "derived", "--update"], Some(&reg.host()), &[]);
    assert_eq!(upd.code, 0, "{upd:?}");
    assert_eq!(
        lock_json(&p, "derived")["base"]["digest"],
        json!(digest_of(&moved))
    );
    // check rebuilds from the pinned base in the blob store.
    let check = p.bottle(&["check", "derived"], Some(&reg.host()), &[]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn a_pipelock_agent_needs_the_network_to_pin_its_sidecar() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    p.edit_json("agents/hello/bottle.json", |v| {
        v["sidecar"] = json!("pipelock")
    });
    let before = p.read("lockfiles/hello.lock.json");
    let out = p.bottle(&["lock", "hello", "--offline"], None, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("ghcr.io/luckypipewrench/pipelock"),
        "{out:?}"
    );
    assert_eq!(p.read("lockfiles/hello.lock.json"), before);
}
