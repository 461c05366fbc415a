//! `.github/workflows/bottle.yml` is valid YAML of the shape GitHub reads,
//! installs bottle with `cargo install --path . --locked`, and its bottle
//! steps are commands `scripts/test` (run by `.ci/run`) runs too: `bottle
//! check --all --json` and `scripts/review-lockfiles`, whose diffs are
//! `bottle diff … --format md`. The review script itself is run on a git
//! project whose lockfile gained a host: Markdown out, exit 1.

mod lock_support;

use std::collections::BTreeSet;

use lock_support::{Project, Variation, repo};
use yaml_rust2::{Yaml, YamlLoader};

fn workflow() -> Yaml {
    let path = repo().join(".github/workflows/bottle.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

/// Every `run:` script of every step of every job.
fn runs(w: &Yaml) -> Vec<String> {
    let jobs = w["jobs"].as_hash().expect("`jobs` is a mapping");
    assert!(!jobs.is_empty());
    let mut out = Vec::new();
    for (name, job) in jobs {
        assert!(
            job["runs-on"].as_str().is_some(),
            "job {name:?} has no runs-on"
        );
        let steps = job["steps"].as_vec().expect("`steps` is a list");
        for s in steps {
            assert!(
                s["run"].as_str().is_some() || s["uses"].as_str().is_some(),
                "a step of {name:?} neither runs nor uses: {s:?}"
            );
            if let Some(r) = s["run"].as_str() {
                out.push(r.to_string());
            }
        }
    }
    out
}

/// The bottle commands a shell text runs, normalized: the binary as
/// `bottle` (workflow: on PATH; scripts/test: target/debug/bottle), the
/// review script by name; env assignments, redirections, pipes and
/// arguments that are revisions dropped.
fn bottle_commands(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut joined = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            continue;
        }
        joined.push_str(line);
        let full = std::mem::take(&mut joined);
        if full.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = full
            .split_whitespace()
            .skip_while(|w| w.contains('=') && !w.starts_with('-'))
            .take_while(|w| !w.starts_with('>') && !w.starts_with('|') && *w != "||")
            .collect();
        let Some(first) = words.first() else { continue };
        if first.ends_with("review-lockfiles") {
            out.insert("scripts/review-lockfiles".to_string());
        } else if *first == "bottle" || first.ends_with("/debug/bottle") {
            let mut cmd = vec!["bottle"];
            cmd.extend(&words[1..]);
            out.insert(cmd.join(" "));
        }
    }
    out
}

#[test]
fn the_workflow_is_valid_yaml_and_runs_the_steps_of_scripts_test() {
    let w = workflow();
    assert_eq!(w["name"].as_str(), Some("bottle"));
    let on = &w["on"];
    assert!(!on["pull_request"].is_badvalue(), "runs on pull requests");
    let runs = runs(&w);
    assert!(
        runs.iter()
            .any(|r| r.trim() == "cargo install --path . --locked"),
        "installs bottle: {runs:?}"
    );
    let in_workflow: BTreeSet<String> = runs.iter().flat_map(|r| bottle_commands(r)).collect();
    let script = std::fs::read_to_string(repo().join("scripts/test")).unwrap();
    let in_test = bottle_commands(&script);
    assert!(
        in_workflow.contains("bottle check --all --json"),
        "{in_workflow:?}"
    );
    assert!(
        in_workflow.contains("scripts/review-lockfiles"),
        "{in_workflow:?}"
    );
    let missing: Vec<&String> = in_workflow.difference(&in_test).collect();
    assert!(
        missing.is_empty(),
        "the workflow runs {missing:?}, which scripts/test does not (scripts/test runs {in_test:?})"
    );
    // The review posts `bottle diff --format md`.
    let review = std::fs::read_to_string(repo().join("scripts/review-lockfiles")).unwrap();
    assert!(
        review.contains(r#""$bottle" diff "$tmp/base.lock.json" "$f" --format md"#),
        "{review}"
    );
}

#[test]
fn the_normalizer_sees_commands_and_skips_the_rest() {
    let text = "# bottle check nothing\nBOTTLE_CACHE_DIR=\"$c\" target/debug/bottle check --all --json >\"$c/x\"\n  BOTTLE=x \\\n   scripts/review-lockfiles HEAD --all >o || code=$?\necho bottle\nbottle diff a b --format md | tee x\n";
    let got: Vec<String> = bottle_commands(text).into_iter().collect();
    assert_eq!(
        got,
        [
            "bottle check --all --json",
            "bottle diff a b --format md",
            "scripts/review-lockfiles",
        ]
    );
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
fn the_review_script_posts_markdown_and_exits_1_when_a_bottle_may_do_more() {
    let p = Project::new(&["hello"], Variation::default());
    git(&p, &["init", "-q"]);
    git(&p, &["add", "."]);
    git(&p, &["commit", "-qm", "base"]);
    let review = |args: &[&str]| {
        let o = std::process::Command::new(repo().join("scripts/review-lockfiles"))
            .args(args)
            .current_dir(p.root())
            .env("BOTTLE", env!("CARGO_BIN_EXE_bottle"))
            .env("BOTTLE_CACHE_DIR", p.cache.path())
            .env("HOME", p.home.path())
            .env("BOTTLE_REGISTRY", "")
            .output()
            .expect("run scripts/review-lockfiles");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Nothing changed: nothing to say.
    let (code, out, err) = review(&["HEAD"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    // `--all` reviews the unchanged lockfile anyway.
    let (code, out, err) = review(&["HEAD", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("did not grow"), "{out}{err}");
    // A host added by hand to the lockfile's policy.
    p.edit_json("lockfiles/hello.lock.json", |v| {
        let allow = v["policy"]["egress"]["allow"].as_array_mut().unwrap();
        allow.push("example.net".into());
        allow.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    });
    let (code, out, err) = review(&["HEAD"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("**Capabilities grew**"), "{out}");
    assert!(out.contains("+ host example.net"), "{out}");
}
