//! `bottle inspect` and `bottle diff` on the real binary: the locked `hello`
//! inspected from its lockfile (by name and by path), the local store, a
//! registry and an archive gives the same JSON; an archive with no lockfile
//! at hand says its provenance is the image's alone; `diff` of two real
//! lockfiles that differ by one allowed host, one env name and one skill
//! names exactly those and exits 1, while a skill whose text alone changed
//! exits 0; `diff hello` compares with git's HEAD; bad input is exit 2 and
//! names what is wrong.

mod common;
mod lock_support;

use lock_support::{Out, Project, Variation, lock_json};
use serde_json::{Value, json};

/// An empty `BOTTLE_REGISTRY`: no registry configured.
const NONE: Option<&str> = Some("");

fn json_of(out: &Out) -> Value {
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("--json output: {e}: {out:?}"))
}

fn digest(p: &Project) -> String {
    lock_json(p, "hello")["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn inspect_gives_the_same_json_from_every_source() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let d = digest(&p);

    // The lockfile alone: no store, no registry, nothing built.
    let by_name = json_of(&p.bottle(&["inspect", "hello", "--json"], NONE, &[]));
    let by_path = json_of(&p.bottle(
        &["inspect", "lockfiles/hello.lock.json", "--json"],
        NONE,
        &[],
    ));
    assert_eq!(by_name, by_path);
    assert_eq!(by_name["schema"], 1);
    assert_eq!(by_name["agent"], "hello");
    assert_eq!(by_name["image"]["manifest_digest"], d);
    assert_eq!(by_name["provenance"], "lockfile");
    let lock = lock_json(&p, "hello");
    assert_eq!(
        by_name["capabilities"]["hosts"],
        lock["policy"]["egress"]["allow"]
    );
    assert_eq!(by_name["capabilities"]["env"], json!(["HELLO_NAME"]));
    assert_eq!(by_name["capabilities"]["limits"]["memory_mib"], 256);
    assert_eq!(by_name["capabilities"]["sidecar"]["kind"], "builtin");
    let layers = by_name["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        lock["image"]["layers"].as_array().unwrap().len()
    );
    let skill = layers.iter().find(|l| l["name"] == "skill:greet").unwrap();
    assert_eq!(skill["made_by"], json!({"kind": "skill", "name": "greet"}));
    assert_eq!(by_name["packages"][0]["name"], "busybox-static");
    assert_eq!(by_name["base"]["reference"], "scratch");

    // Not in the store yet: the lockfile that locks the digest answers; a
    // digest nothing here has is exit 3, saying where to look.
    let locked = p.bottle(&["inspect", &format!("hello@{d}"), "--json"], NONE, &[]);
    assert_eq!(json_of(&locked), by_name);
    assert!(locked.stderr.contains("inspected lockfile"), "{locked:?}");
    let unknown = format!("hello@sha256:{}", "0".repeat(64));
    let missing = p.bottle(&["inspect", &unknown], NONE, &[]);
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(
        missing.stderr.contains("not in the local store"),
        "{missing:?}"
    );

    // `check` rebuilds the image into the store.
    let check = p.bottle(&["check", "hello"], NONE, &[]);
    assert_eq!(check.code, 0, "{check:?}");
    let store = p.bottle(&["inspect", &format!("hello@{d}"), "--json"], NONE, &[]);
    assert!(store.stderr.contains("in the local store"), "{store:?}");
    assert_eq!(json_of(&store), by_name, "store and lockfile differ");

    // An archive, inspected without importing it.
    let tar = p.dir.path().join("hello.tar");
    let tar_s = tar.to_str().unwrap();
    let export = p.bottle(&["export", "hello", "-o", tar_s], NONE, &[]);
    assert_eq!(export.code, 0, "{export:?}");
    let archive = json_of(&p.bottle(&["inspect", tar_s, "--json"], NONE, &[]));
    assert_eq!(archive, by_name, "archive and lockfile differ");

    // A registry, from another cache (so nothing local has the image).
    let to = format!("{}/bottle/hello", reg.host());
    let push = p.bottle(&["push", "hello", "--to", &to], NONE, &[]);
    assert_eq!(push.code, 0, "{push:?}");
    let other = Project::new(&["hello"], Variation::default());
    let remote = other.bottle(&["inspect", &format!("{to}@{d}"), "--json"], NONE, &[]);
    assert!(
        remote.stderr.contains("pulled from its registry"),
        "{remote:?}"
    );
    assert_eq!(json_of(&remote), by_name, "registry and lockfile differ");

    // Without a lockfile that locks it, only the image speaks: the same
    // capabilities, but no layer provenance, inputs or base.
    let bare = tempfile::tempdir().unwrap();
    let out = common::run_bottle(
        &["inspect", tar_s, "--json"],
        bare.path(),
        &[
            (
                "BOTTLE_CACHE_DIR",
                bare.path().join("cache").to_str().unwrap(),
            ),
            ("HOME", bare.path().to_str().unwrap()),
            ("BOTTLE_REGISTRY", ""),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let image_only: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(image_only["provenance"], "image");
    assert_eq!(image_only["capabilities"], by_name["capabilities"]);
    assert_eq!(image_only["image"], by_name["image"]);
    assert_eq!(image_only["inputs"], Value::Null);
    assert_eq!(image_only["layers"][0]["name"], "layer:0");
    assert!(out.stderr.contains("unknown"), "{out:?}");
    // The archive was not imported: that cache was never even created.
    assert!(!bare.path().join("cache").exists(), "inspect wrote a store");

    // The human report names the same things.
    let human = p.bottle(&["inspect", "hello"], NONE, &[]);
    assert_eq!(human.code, 0, "{human:?}");
    for want in [
        "may do:",
        "example.com",
        "HELLO_NAME",
        "skill greet",
        "busybox-static",
    ] {
        assert!(human.stdout.contains(want), "{want}: {human:?}");
    }
}

/// Lock `hello` as it is now (no registry; the shared download cache makes
/// the Debian packages local).
fn lock(p: &Project) {
    let out = p.bottle(&["lock", "hello"], NONE, &[]);
    assert_eq!(out.code, 0, "{out:?}");
}

fn save_lock(p: &Project, name: &str) -> String {
    let path = p.dir.path().join(name);
    std::fs::write(&path, p.read("lockfiles/hello.lock.json")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn diff_names_one_host_one_env_and_one_skill_and_exits_1() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let old = save_lock(&p, "old.lock.json");
    p.edit_json("agents/hello/bottle.json", |v| {
        v["egress"]["allow"]
            .as_array_mut()
            .unwrap()
            .push(json!("example.net"));
        v["env"].as_array_mut().unwrap().push(json!("EXTRA_NAME"));
        v["skills"]
            .as_array_mut()
            .unwrap()
            .push(json!("skills/wave"));
    });
    p.write(
        "agents/hello/skills/wave/SKILL.md",
        "---\nname: wave\ndescription: Wave at the user.\n---\n\nWave.\n",
    );
    lock(&p);
    let new = save_lock(&p, "new.lock.json");

    let out = p.bottle(&["diff", &old, &new, "--json"], NONE, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["grew"], true);
    let c = &r["capabilities"];
    assert_eq!(c["hosts"], json!({"added": ["example.net"], "removed": []}));
    assert_eq!(c["env"], json!({"added": ["EXTRA_NAME"], "removed": []}));
    assert_eq!(c["ssh_hosts"], json!({"added": [], "removed": []}));
    assert_eq!(
        c["secrets"],
        json!({"added": [], "removed": [], "changed": []})
    );
    assert_eq!(c["limits"], json!([]));
    assert_eq!(c["sidecar"], Value::Null);
    assert_eq!(r["growth"].as_array().unwrap().len(), 2, "{r}");
    let skills = &r["contents"]["skills"];
    assert_eq!(skills["added"].as_array().unwrap().len(), 1, "{skills}");
    assert_eq!(skills["added"][0]["name"], "wave");
    assert_eq!(skills["removed"], json!([]));
    assert_eq!(skills["changed"], json!([]));
    assert!(
        r["contents"]["layers"]["added"][0]["name"] == "skill:wave",
        "{r}"
    );

    // The human and Markdown forms say exactly those capabilities.
    let human = p.bottle(&["diff", &old, &new], NONE, &[]);
    assert_eq!(human.code, 1, "{human:?}");
    let section: Vec<&str> = human
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("may do:"))
        .skip(1)
        .take_while(|l| *l != "is:")
        .map(str::trim)
        .collect();
    assert_eq!(
        section,
        ["+ host example.net", "+ env EXTRA_NAME"],
        "{human:?}"
    );
    assert!(human.stdout.contains("+ skill wave"), "{human:?}");
    let md = p.bottle(&["diff", &old, &new, "--format", "md"], NONE, &[]);
    assert_eq!(md.code, 1, "{md:?}");
    assert!(md.stdout.contains("**Capabilities grew**"), "{md:?}");
    assert!(md.stdout.contains("+ host example.net"), "{md:?}");

    // The other way round nothing grew (removals are not growth).
    let back = p.bottle(&["diff", &new, &old], NONE, &[]);
    assert_eq!(back.code, 0, "{back:?}");
    assert!(back.stdout.contains("- host example.net"), "{back:?}");
}

#[test]
fn a_skill_whose_text_changed_is_content_and_exits_0() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let old = save_lock(&p, "old.lock.json");
    let skill = "agents/hello/skills/greet/SKILL.md";
    let text = String::from_utf8(p.read(skill)).unwrap();
    p.write(skill, format!("{text}\nSay it warmly.\n"));
    lock(&p);
    let new = save_lock(&p, "new.lock.json");
    assert_ne!(
        std::fs::read(&old).unwrap(),
        std::fs::read(&new).unwrap(),
        "the lock did not change"
    );
    let out = p.bottle(&["diff", &old, &new, "--json"], NONE, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["grew"], false);
    assert_eq!(r["contents"]["skills"]["changed"][0]["name"], "greet");
    assert_eq!(r["contents"]["skills"]["added"], json!([]));
    assert_eq!(r["contents"]["layers"]["changed"][0]["name"], "skill:greet");
    assert!(r["contents"]["image"].is_object(), "{r}");
}

fn git(p: &Project, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(p.root())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn diff_with_one_agent_compares_with_git_head() {
    if !common::require_busybox() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    // Not a git repository yet.
    let out = p.bottle(&["diff", "hello"], NONE, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not in a git repository"), "{out:?}");

    git(&p, &["init", "-q"]);
    git(&p, &["add", "agents", "images"]);
    git(&p, &["commit", "-qm", "no lockfile yet"]);
    let out = p.bottle(&["diff", "hello"], NONE, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not in git's HEAD"), "{out:?}");

    git(&p, &["add", "lockfiles"]);
    git(&p, &["commit", "-qm", "lock"]);
    let same = p.bottle(&["diff", "hello"], NONE, &[]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(same.stdout.contains("(unchanged)"), "{same:?}");

    p.edit_json("agents/hello/bottle.json", |v| {
        v["egress"]["ssh"] = json!(["git.example.com"]);
    });
    lock(&p);
    let out = p.bottle(&["diff", "hello", "--format", "md"], NONE, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("+ ssh host git.example.com"), "{out:?}");
}

#[test]
fn bad_references_are_exit_2_and_say_what_is_wrong() {
    let p = Project::new(&["hello"], Variation::default());
    let cases: [(&[&str], &str); 6] = [
        (
            &["inspect", "./nope.lock.json"],
            "nope.lock.json: no such file",
        ),
        (&["inspect", "agents/hello/bottle.json"], "not a lockfile"),
        (&["inspect", "nosuch"], "unknown agent `nosuch`"),
        (&["inspect", "hello:latest"], "names a tag"),
        (&["diff", "hello", "./gone.json"], "gone.json: no such file"),
        (&["diff", "./a.lock.json"], "name an agent"),
    ];
    for (args, want) in cases {
        let out = p.bottle(args, NONE, &[]);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(want),
            "{args:?}: want {want:?}: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    // A file that is neither a lockfile nor an archive.
    p.write("junk.tar", "this is not a tar archive\n");
    let out = p.bottle(&["inspect", "junk.tar"], NONE, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("archive"), "{out:?}");
    assert!(out.stderr.contains("junk.tar"), "{out:?}");
    // A damaged lockfile names its field.
    p.edit_json("lockfiles/hello.lock.json", |v| {
        v["image"]["manifest_digest"] = json!("sha256:nothex")
    });
    let out = p.bottle(&["inspect", "lockfiles/hello.lock.json"], NONE, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("image.manifest_digest"), "{out:?}");
    // A manifest without its lockfile is "not locked", not "unknown".
    std::fs::remove_file(p.path("lockfiles/hello.lock.json")).unwrap();
    let out = p.bottle(&["inspect", "hello"], NONE, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("bottle lock hello"), "{out:?}");
}
