//! Unit tests of manifest and recipe loading against small projects in temp
//! dirs: defaults merged, every error naming file, field and line, paths
//! kept inside the project.

use std::fs;
use std::path::Path;

use super::*;

/// A minimal valid project: recipe `base` from scratch, agent `a` with one
/// skill and a prompt.
fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::create_dir_all(r.join("images")).unwrap();
    fs::create_dir_all(r.join("agents/a/skills/greet")).unwrap();
    fs::write(
        r.join("images/base.json"),
        r#"{"schema": 1, "from": "scratch", "links": {"/bin/sh": "busybox"}}"#,
    )
    .unwrap();
    fs::write(
        r.join("agents/a/skills/greet/SKILL.md"),
        "---\nname: greet\ndescription: Say hello\n---\nBody\n",
    )
    .unwrap();
    fs::write(r.join("agents/a/prompt.md"), "hi\n").unwrap();
    write_manifest(
        r,
        r#"{"schema": 1, "image": "base", "skills": ["skills/greet"], "env": ["B", "A"],
            "egress": {"allow": ["Example.COM.", "*.github.com"], "defaults": false},
            "sidecar": "builtin", "prompt": "prompt.md"}"#,
    );
    d
}

fn write_manifest(root: &Path, text: &str) {
    fs::write(root.join("agents/a/bottle.json"), text).unwrap();
}

fn err(root: &Path) -> Diag {
    match load_agent(root, "a") {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.diag().cloned().unwrap_or_else(|| panic!("no diag: {e}")),
    }
}

#[test]
fn loads_a_valid_agent() {
    let d = project();
    let a = load_agent(d.path(), "a").unwrap();
    assert_eq!(a.env, ["A", "B"]);
    assert_eq!(a.egress.allow, ["*.github.com", "example.com"]);
    assert_eq!(a.skills[0].name, "greet");
    assert_eq!(a.skills[0].input.source, "agents/a/skills/greet");
    assert_eq!(a.prompt.as_ref().unwrap().source, "agents/a/prompt.md");
    assert_eq!(a.recipe.from, From::Scratch);
    assert_eq!(a.sidecar, SidecarKind::Builtin);
    a.policy(None).validate().unwrap();
}

#[test]
fn defaults_are_merged_unless_opted_out() {
    let d = project();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "egress": {"allow": ["example.com"]}}"#,
    );
    let a = load_agent(d.path(), "a").unwrap();
    for h in crate::policy::DEFAULT_ALLOW {
        assert!(a.egress.allow.iter().any(|x| x == h), "{h}");
    }
    assert_eq!(a.sidecar, SidecarKind::Pipelock);
}

#[test]
fn errors_name_file_field_and_line() {
    let d = project();
    write_manifest(
        d.path(),
        "{\"schema\": 1,\n \"image\": \"base\",\n \"egress\": {\"allow\": [\"a.com\", \"b.com\", \"http://x.com\"]}}",
    );
    let e = err(d.path());
    assert_eq!(e.file, "agents/a/bottle.json");
    assert_eq!(e.field, "egress.allow[2]");
    assert_eq!(e.at.unwrap().0, 3);
    assert!(e.problem.contains("scheme"), "{}", e.problem);

    write_manifest(
        d.path(),
        "{\"schema\": 1, \"image\": \"base\", \"egres\": {}}",
    );
    let e = err(d.path());
    assert!(e.problem.contains("unknown field `egres`"), "{}", e.problem);

    write_manifest(d.path(), "{\"schema\": 2, \"image\": \"base\"}");
    assert_eq!(err(d.path()).field, "schema");

    write_manifest(
        d.path(),
        "{\"schema\": 1, \"image\": \"base\", \"env\": [\"X\", \"X\"]}",
    );
    assert_eq!(err(d.path()).field, "env[1]");
}

#[test]
fn single_label_wildcards_are_refused_at_lock_time() {
    // pipelock exits at start on `*.lan`; refuse it before an image exists.
    let d = project();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "egress": {"allow": ["a.com", "*.lan"]}}"#,
    );
    let e = err(d.path());
    assert_eq!(e.field, "egress.allow[1]");
    assert!(e.problem.contains("single label"), "{}", e.problem);
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "egress": {"ssh": ["*.lan"]}}"#,
    );
    assert_eq!(err(d.path()).field, "egress.ssh[0]");
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "egress": {"allow": ["*.corp.lan", "lan"]}}"#,
    );
    assert!(load_agent(d.path(), "a").is_ok());
}

#[test]
fn paths_may_not_escape() {
    let d = project();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "prompt": "../../../etc/hostname"}"#,
    );
    let e = err(d.path());
    assert_eq!(e.field, "prompt");
    assert!(e.problem.contains("escapes"), "{}", e.problem);

    // Explicit `..` inside the project is fine.
    fs::create_dir_all(d.path().join("shared/s")).unwrap();
    fs::write(
        d.path().join("shared/s/SKILL.md"),
        "---\nname: s\ndescription: d\n---\n",
    )
    .unwrap();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "skills": ["../../shared/s"]}"#,
    );
    let a = load_agent(d.path(), "a").unwrap();
    assert_eq!(a.skills[0].input.source, "shared/s");

    // A symlinked prompt leading out of the agent folder is not explicit.
    std::os::unix::fs::symlink("../../shared/s/SKILL.md", d.path().join("agents/a/p.md")).unwrap();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "prompt": "p.md"}"#,
    );
    assert!(err(d.path()).problem.contains("symlink"));
}

#[test]
fn front_matter_parsing() {
    let fm = front_matter("---\nname: x\ndescription: \"a b\"\n  continued\n---\nbody").unwrap();
    assert_eq!(fm["name"], "x");
    assert_eq!(fm["description"], "a b continued");
    assert!(front_matter("no fence").is_err());
    assert!(front_matter("---\nname x\n---\n").is_err());
    assert!(front_matter("---\nname: x\n").is_err());
    assert!(front_matter("---\nname: x\nname: y\n---\n").is_err());
}

#[test]
fn memory_sizes() {
    assert_eq!(parse_memory("512m"), Some(512));
    assert_eq!(parse_memory("4g"), Some(4096));
    assert_eq!(parse_memory("2GiB"), Some(2048));
    assert_eq!(parse_memory("0m"), None);
    assert_eq!(parse_memory("12"), None);
}
