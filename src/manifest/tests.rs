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

#[test]
fn more_skills_than_the_engine_can_stack_are_refused_naming_the_limit() {
    let d = project();
    let r = d.path();
    let mut list = Vec::new();
    for i in 0..=MAX_SKILLS {
        let dir = r.join(format!("agents/a/skills/s{i}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("SKILL.md"),
            format!("---\nname: s{i}\ndescription: skill {i}\n---\n"),
        )
        .unwrap();
        list.push(format!("\"skills/s{i}\""));
    }
    let manifest = |n: usize| {
        format!(
            "{{\"schema\": 1, \"image\": \"base\",\n \"skills\": [{}]}}",
            list[..n].join(", ")
        )
    };
    write_manifest(r, &manifest(MAX_SKILLS));
    assert_eq!(load_agent(r, "a").unwrap().skills.len(), MAX_SKILLS);

    write_manifest(r, &manifest(MAX_SKILLS + 1));
    let e = err(r);
    assert_eq!(e.file, "agents/a/bottle.json");
    assert_eq!(e.field, "skills");
    assert_eq!(e.at.unwrap().0, 2);
    assert!(
        e.problem
            .starts_with("101 skills listed; at most 100 are allowed"),
        "{}",
        e.problem
    );
}

/// A key that counts how often it is compared or hashed.
struct Counted(u32);

static OPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        OPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0 == other.0
    }
}

impl Eq for Counted {}

impl std::hash::Hash for Counted {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        OPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.hash(h);
    }
}

#[test]
fn the_duplicate_check_does_a_bounded_amount_of_work_per_item() {
    // Every hash and every comparison counts: a hash map hashes each item
    // once (plus rehashing as it grows) and compares only on a hash-tag
    // match; a scan of the earlier items would compare n²/2 times.
    let n = 100_000u32;
    let items: Vec<Counted> = (0..n).chain([7]).map(Counted).collect();
    let mut seen = FirstSeen::default();
    let mut found = None;
    for (i, item) in items.iter().enumerate() {
        if let Some(j) = seen.check(item, i) {
            found = Some((j, i));
        }
    }
    assert_eq!(found, Some((7, n as usize)));
    let ops = OPS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ops <= 3 * items.len(),
        "{ops} hashes and comparisons for {} items",
        items.len()
    );
}

#[test]
fn a_long_env_list_loads_and_a_late_duplicate_names_the_first() {
    // 200k names: a quadratic duplicate scan needs ~2·10¹⁰ comparisons here.
    let d = project();
    let n = 200_000;
    let mut names: Vec<String> = (0..n).map(|i| format!("\"V{i}\"")).collect();
    write_manifest(
        d.path(),
        &format!(
            "{{\"schema\": 1, \"image\": \"base\", \"env\": [{}]}}",
            names.join(",")
        ),
    );
    let a = load_agent(d.path(), "a").unwrap();
    assert_eq!(a.env.len(), n);
    names.push("\"V3\"".into());
    write_manifest(
        d.path(),
        &format!(
            "{{\"schema\": 1, \"image\": \"base\", \"env\": [{}]}}",
            names.join(",")
        ),
    );
    let e = err(d.path());
    assert_eq!(e.field, format!("env[{n}]"));
    assert!(e.problem.contains("(also env[3])"), "{}", e.problem);
fn limits_disk_is_parsed_like_memory_and_bounded() {
    let d = project();
    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "limits": {"memory": "512m", "disk": "2g"}}"#,
    );
    let a = load_agent(d.path(), "a").unwrap();
    assert_eq!(a.limits.disk_mib, 2048);
    assert_eq!(a.limits.memory_mib, 512);
    assert!(
        a.policy(None)
            .to_canonical_json()
            .contains("\"disk_mib\":2048")
    );

    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "limits": {"disk": "lots"}}"#,
    );
    let e = err(d.path());
    assert_eq!(e.field, "limits.disk");
    assert!(e.problem.contains("`lots` is not a size"), "{}", e.problem);

    write_manifest(
        d.path(),
        r#"{"schema": 1, "image": "base", "limits": {"disk": "99999999999g"}}"#,
    );
    assert_eq!(err(d.path()).field, "limits.disk");

    // Unset: the default, and absent from the label (old digests hold).
    write_manifest(d.path(), r#"{"schema": 1, "image": "base"}"#);
    let a = load_agent(d.path(), "a").unwrap();
    assert_eq!(a.limits.disk_mib, crate::policy::DEFAULT_DISK_MIB);
    assert!(!a.policy(None).to_canonical_json().contains("disk_mib"));
}
