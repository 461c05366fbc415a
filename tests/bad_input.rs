//! Bad manifests, recipes and lockfiles: each gives exit 2, a message naming
//! the file and the field, nothing on stdout, and leaves the previous
//! lockfile byte-for-byte unchanged. No registry is running (the registry
//! points at a closed loopback port): validation must fail before any
//! network step.

mod common;
mod lock_support;

use std::fs;

use lock_support::{Project, Variation};
use serde_json::json;

const M: &str = "agents/hello/bottle.json";
const R: &str = "images/busybox.json";
const L: &str = "lockfiles/hello.lock.json";

type Setup = fn(&Project);

fn cases() -> Vec<(&'static str, Setup, &'static [&'static str])> {
    vec![
        (
            "unknown field",
            |p| p.edit_json(M, |v| v["colour"] = json!("blue")),
            &[M, "unknown field `colour`"],
        ),
        (
            "missing SKILL.md",
            |p| fs::remove_file(p.path("agents/hello/skills/greet/SKILL.md")).unwrap(),
            &[M, "skills[0]", "SKILL.md"],
        ),
        (
            "bad hostname",
            |p| {
                p.edit_json(M, |v| {
                    v["egress"]["allow"] = json!(["ok.com", "exa mple.com"])
                })
            },
            &[M, "egress.allow[1]"],
        ),
        (
            "scheme in host",
            |p| p.edit_json(M, |v| v["egress"]["allow"] = json!(["https://example.com"])),
            &[M, "egress.allow[0]", "scheme"],
        ),
        (
            "port in host",
            |p| p.edit_json(M, |v| v["egress"]["allow"] = json!(["example.com:443"])),
            &[M, "egress.allow[0]", "port"],
        ),
        (
            "userinfo in host",
            |p| p.edit_json(M, |v| v["egress"]["ssh"] = json!(["git@github.com"])),
            &[M, "egress.ssh[0]", "userinfo"],
        ),
        (
            "IP literal",
            |p| p.edit_json(M, |v| v["egress"]["allow"] = json!(["10.0.0.1"])),
            &[M, "egress.allow[0]", "IP address"],
        ),
        (
            "wildcard in the middle",
            |p| p.edit_json(M, |v| v["egress"]["allow"] = json!(["a.*.example.com"])),
            &[M, "egress.allow[0]", "`*`"],
        ),
        (
            "duplicate env",
            |p| p.edit_json(M, |v| v["env"] = json!(["HELLO_NAME", "X", "HELLO_NAME"])),
            &[M, "env[2]", "twice"],
        ),
        (
            "bad env name",
            |p| p.edit_json(M, |v| v["env"] = json!(["1X"])),
            &[M, "env[0]"],
        ),
        (
            "`..` escape",
            |p| p.edit_json(M, |v| v["prompt"] = json!("../../../../../etc/hostname")),
            &[M, "prompt", "escapes the project root"],
        ),
        (
            "symlink escape",
            |p| {
                std::os::unix::fs::symlink("/etc/passwd", p.path("agents/hello/skills/greet/leak"))
                    .unwrap()
            },
            &[M, "skills[0]", "outside"],
        ),
        (
            "missing prompt",
            |p| fs::remove_file(p.path("agents/hello/prompt.md")).unwrap(),
            &[M, "prompt", "does not exist"],
        ),
        (
            "wrong fetched hash (recipe)",
            |p| {
                p.edit_json(R, |v| {
                    v["fetch"] = json!([{"url": "file:///bin/busybox", "sha256": "0".repeat(64), "dest": "/usr/bin/bb", "mode": "0755"}])
                })
            },
            &[R, "fetch[0].sha256", "file:///bin/busybox", "0000000000"],
        ),
        (
            "wrong fetched hash (lockfile pin)",
            |p| {
                p.edit_json(R, |v| {
                    v["fetch"] = json!([{"url": "file:///bin/busybox", "dest": "/usr/bin/bb", "mode": "0755"}])
                });
                p.edit_json(L, |v| {
                    v["inputs"].as_array_mut().unwrap().push(json!({
                        "name": "fetch:/usr/bin/bb",
                        "url": "file:///bin/busybox",
                        "hash": format!("sha256:{}", "1".repeat(64)),
                    }))
                })
            },
            &[L, "file:///bin/busybox", "1111111111"],
        ),
        (
            "corrupt JSON",
            |p| p.write(M, "{\n  \"schema\": 1,\n  \"image\": \"busybox\",,\n}"),
            &["agents/hello/bottle.json:3:"],
        ),
        (
            "unknown schema",
            |p| p.edit_json(M, |v| v["schema"] = json!(9)),
            &[M, "field `schema`", "schema 9"],
        ),
        (
            "duplicate skill name",
            |p| {
                lock_support::copy_tree(
                    &p.path("agents/hello/skills/greet"),
                    &p.path("agents/hello/skills/greet2"),
                    Variation::default(),
                );
                p.edit_json(M, |v| {
                    v["skills"] = json!(["skills/greet", "skills/greet2"])
                });
            },
            &[M, "skills[1]", "`greet`"],
        ),
        (
            "bad front matter",
            |p| {
                p.write(
                    "agents/hello/skills/greet/SKILL.md",
                    "---\nname: greet\ndescription: x\n",
                )
            },
            &[
                "agents/hello/skills/greet/SKILL.md",
                "front matter",
                "closing",
            ],
        ),
        (
            "front matter without description",
            |p| {
                p.write(
                    "agents/hello/skills/greet/SKILL.md",
                    "---\nname: greet\n---\n",
                )
            },
            &[
                "agents/hello/skills/greet/SKILL.md",
                "front matter.description",
            ],
        ),
        (
            "bad lockfile JSON",
            |p| {
                let mut b = p.read(L);
                b.truncate(b.len() / 2);
                p.write(L, b);
            },
            &[L],
        ),
        (
            "unknown field in lockfile",
            |p| p.edit_json(L, |v| v["registry"] = json!("localhost:5000")),
            &[L, "unknown field `registry`"],
        ),
        (
            "tampered lockfile digest syntax",
            |p| p.edit_json(L, |v| v["image"]["manifest_digest"] = json!("sha256:XYZ")),
            &[L, "image.manifest_digest"],
        ),
        (
            "unknown field in recipe",
            |p| p.edit_json(R, |v| v["maintainer"] = json!("me")),
            &[R, "unknown field `maintainer`"],
        ),
        (
            "missing recipe",
            |p| p.edit_json(M, |v| v["image"] = json!("nope")),
            &[M, "field `image`", "images/nope.json"],
        ),
        (
            "bad fetch URL",
            |p| {
                p.edit_json(R, |v| {
                    v["fetch"] = json!([{"url": "ftp://example.com/x", "dest": "/usr/bin/x"}])
                })
            },
            &[R, "fetch[0].url"],
        ),
        (
            "bad fetch mode",
            |p| {
                p.edit_json(R, |v| {
                    v["fetch"] = json!([{"url": "file:///bin/busybox", "dest": "/usr/bin/x", "mode": "rwx"}])
                })
            },
            &[R, "fetch[0].mode"],
        ),
        (
            "bad Debian package name",
            |p| p.edit_json(R, |v| v["packages"]["include"][0] = json!("Busybox Static")),
            &[R, "packages.include[0]", "Busybox Static"],
        ),
        (
            "Debian packages on a pulled base",
            |p| p.edit_json(R, |v| v["from"] = json!("debian:bookworm-slim")),
            &[R, "packages", "scratch"],
        ),
        (
            "unknown sidecar",
            |p| p.edit_json(M, |v| v["sidecar"] = json!("squid")),
            &[M, "sidecar", "squid"],
        ),
        (
            "relative image path in files",
            |p| p.edit_json(M, |v| v["files"] = json!({"home/x": "CLAUDE.md"})),
            &[M, "files.home/x", "absolute"],
        ),
        (
            "bad memory limit",
            |p| p.edit_json(M, |v| v["limits"]["memory"] = json!("lots")),
            &[M, "limits.memory"],
        ),
        (
            "wrong type",
            |p| p.edit_json(M, |v| v["env"] = json!("HELLO_NAME")),
            &[M, "field `env`", "invalid type"],
        ),
    ]
}

#[test]
fn every_kind_of_bad_input_exits_2_names_file_and_field_and_keeps_the_lockfile() {
    // One case reads the recipe's `file:///bin/busybox`.
    if !common::require_busybox() {
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, setup, expect) in cases {
        let p = Project::new(&["hello"], Variation::default());
        setup(&p);
        let before = p.read(L);
        let out = p.bottle(&["lock", "hello"], None, &[]);
        let after = p.read(L);
        let mut why = Vec::new();
        if out.code != 2 {
            why.push(format!("exit {} (want 2)", out.code));
        }
        if !out.stdout.is_empty() {
            why.push(format!("stdout not empty: {:?}", out.stdout));
        }
        for e in expect {
            if !out.stderr.contains(e) {
                why.push(format!("stderr lacks {e:?}"));
            }
        }
        if before != after {
            why.push("the lockfile changed".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{name}: {}\n--- stderr:\n{}",
                why.join("; "),
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_reports_bad_input_with_exit_2() {
    let p = Project::new(&["hello"], Variation::default());
    p.edit_json(M, |v| v["egress"]["allow"] = json!(["*.*.com"]));
    let out = p.bottle(&["check", "hello"], None, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("egress.allow[0]"), "{out:?}");
}
