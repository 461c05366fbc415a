//! `bottle check`: 0 on a fresh lockfile that rebuilds to its digest, 1 on a
//! stale lockfile (manifest or skill edited) and on a tampered digest, with
//! the input or layer that differs named. `check` needs no registry for a
//! `scratch`-based agent and never writes the lockfile.

mod common;
mod lock_support;

use lock_support::{Project, Variation};
use serde_json::json;

const L: &str = "lockfiles/hello.lock.json";

fn ready() -> bool {
    common::require_busybox()
}

fn report(out: &lock_support::Out) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json output: {e}: {out:?}"));
    v[0].clone()
}

#[test]
fn fresh_lockfile_passes() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let out = p.bottle(&["check", "hello", "--json"], None, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = report(&out);
    assert_eq!(r["up_to_date"], true);
    assert_eq!(r["reproducible"], true);
    assert_eq!(r["locked_digest"], r["rebuilt_digest"]);
    // `--all` covers the same agent (the copy holds only hello).
    let all = p.bottle(&["check", "--all"], None, &[]);
    assert_eq!(all.code, 0, "{all:?}");
}

#[test]
fn edited_manifest_is_stale() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let before = p.read(L);
    p.edit_json("agents/hello/bottle.json", |v| {
        v["egress"]["allow"] = json!(["example.com", "example.net"])
    });
    let out = p.bottle(&["check", "hello", "--json"], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let r = report(&out);
    assert_eq!(r["up_to_date"], false);
    let problems = r["problems"].to_string();
    assert!(problems.contains("input `manifest`"), "{problems}");
    assert!(out.stderr.contains("bottle lock hello"), "{out:?}");
    assert_eq!(p.read(L), before, "check wrote the lockfile");
}

#[test]
fn edited_skill_is_stale_and_named() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    p.write("agents/hello/skills/greet/extra.txt", "new file\n");
    let out = p.bottle(&["check", "hello", "--json"], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let problems = report(&out)["problems"].to_string();
    assert!(problems.contains("input `skill:greet`"), "{problems}");
    assert!(!problems.contains("input `prompt`"), "{problems}");
}

#[test]
fn tampered_digest_fails_and_names_what_differs() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    p.edit_json(L, |v| {
        let layers = v["image"]["layers"].as_array_mut().unwrap();
        let skill = layers
            .iter_mut()
            .find(|l| l["name"] == "skill:greet")
            .unwrap();
        skill["digest"] = json!(format!("sha256:{}", "a".repeat(64)));
        v["image"]["manifest_digest"] = json!(format!("sha256:{}", "b".repeat(64)));
    });
    let out = p.bottle(&["check", "hello", "--json"], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let r = report(&out);
    assert_eq!(r["up_to_date"], true);
    assert_eq!(r["reproducible"], false);
    let problems = r["problems"].to_string();
    assert!(problems.contains("manifest digest"), "{problems}");
    assert!(
        problems.contains("layer 3 `skill:greet` differs"),
        "{problems}"
    );
    assert!(!problems.contains("`config` differs"), "{problems}");
    // The first difference is the lowest layer that differs.
    assert_eq!(r["status"], "differs");
    assert_eq!(
        r["first_difference"]["kind"], "layer",
        "{}",
        r["first_difference"]
    );
    assert_eq!(r["first_difference"]["name"], "skill:greet");
    assert_ne!(r["expected_digest"], r["actual_digest"]);
}

#[test]
fn tampered_policy_in_lockfile_fails() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    p.edit_json(L, |v| {
        v["policy"]["egress"]["allow"] = json!(["evil.example"]);
    });
    let out = p.bottle(&["check", "hello", "--json"], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        report(&out)["problems"].to_string().contains("policy"),
        "{out:?}"
    );
}

#[test]
fn missing_lockfile_fails() {
    let p = Project::new(&["hello"], Variation::default());
    std::fs::remove_file(p.path(L)).unwrap();
    let out = p.bottle(&["check", "hello"], None, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
}

#[test]
fn a_digest_from_other_content_names_the_file_that_differs() {
    if !ready() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let p = Project::new(&["hello"], Variation::default());
    let first = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let old = lock_support::lock_json(&p, "hello");
    p.write(
        "agents/hello/skills/greet/SKILL.md",
        "---\nname: greet\ndescription: changed\n---\n",
    );
    let second = p.bottle(&["lock", "hello"], Some(&reg.host()), &[]);
    assert_eq!(second.code, 0, "{second:?}");
    // The lockfile now claims the new inputs but the old image.
    p.edit_json(L, |v| v["image"] = old["image"].clone());
    let out = p.bottle(&["check", "hello", "--json"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let problems = report(&out)["problems"].to_string();
    assert!(problems.contains("`skill:greet` differs"), "{problems}");
    assert!(
        problems.contains("home/agent/.claude/skills/greet/SKILL.md: content differs"),
        "{problems}"
    );
}

/// A reader that went away (`bottle check --json | head -0`) is not an
/// error: the exit code stays the check's, not a panic's 101.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};
    if !ready() {
        return;
    }
    let p = Project::new(&["hello"], Variation::default());
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills two fresh descriptors we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["check", "hello", "--json"])
        .current_dir(p.root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .env("BOTTLE_CACHE_DIR", p.root().join(".cache"))
        .env_remove("BOTTLE_ROOT")
        .env("BOTTLE_REGISTRY", "127.0.0.1:9")
        .output()
        .expect("run bottle");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The documented `check --all --json` shape: `{schema, agents, summary}`,
/// one object per agent with its status, expected and actual digests and
/// the first difference; an agent that was never locked is `unlocked` and
/// does not fail `--all` (it still fails when named).
#[test]
fn check_all_json_has_one_object_per_agent_and_a_summary() {
    if !ready() {
        return;
    }
    let p = Project::new(&["hello", "claude"], Variation::default());
    assert!(!p.path("lockfiles/claude.lock.json").exists());
    let out = p.bottle(&["check", "--all", "--json"], Some(""), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["schema"], 1);
    let agents = v["agents"].as_array().unwrap();
    let names: Vec<&str> = agents
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude", "hello"]);
    let hello = &agents[1];
    assert_eq!(hello["status"], "ok");
    let locked = serde_json::from_slice::<serde_json::Value>(&p.read(L)).unwrap()["image"]
        ["manifest_digest"]
        .clone();
    assert_eq!(hello["expected_digest"], locked);
    assert_eq!(hello["actual_digest"], locked);
    assert_eq!(hello["first_difference"], serde_json::Value::Null);
    assert_eq!(agents[0]["status"], "unlocked");
    assert_eq!(agents[0]["first_difference"]["name"], "lockfile");
    assert_eq!(
        v["summary"],
        json!({"agents": 2, "ok": 1, "stale": 0, "differs": 0, "unlocked": 1, "error": 0, "exit": 0})
    );
    // Named, the unlocked agent fails as before.
    let named = p.bottle(&["check", "claude"], Some(""), &[]);
    assert_eq!(named.code, 1, "{named:?}");

    // A stale lockfile: status, first differing input, summary and exit 1.
    p.write("agents/hello/skills/greet/extra.txt", "new file\n");
    let out = p.bottle(&["check", "--all", "--json"], Some(""), &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let hello = &v["agents"][1];
    assert_eq!(hello["status"], "stale");
    assert_eq!(
        hello["first_difference"]["kind"], "input",
        "{}",
        hello["first_difference"]
    );
    assert_eq!(hello["first_difference"]["name"], "skill:greet");
    assert_eq!(hello["expected_digest"], locked);
    assert_eq!(hello["actual_digest"], serde_json::Value::Null);
    assert_eq!(v["summary"]["stale"], 1);
    assert_eq!(v["summary"]["exit"], 1);
}
