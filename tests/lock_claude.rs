//! The real agent, `agents/claude`, validates completely here; locking it
//! fails only at the first network step (its Debian archive's `InRelease`), with exit
//! 3 and a message saying so. `--offline` keeps the test from sending any
//! traffic outside the machine.

mod lock_support;

use lock_support::{Project, Variation};

#[test]
fn claude_validates_and_fails_only_at_the_network_step() {
    let p = Project::new(&["claude"], Variation::default());
    let out = p.bottle(&["lock", "claude", "--offline"], None, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.contains("needs the network"), "{out:?}");
    assert!(out.stderr.contains("InRelease"), "{out:?}");
    assert!(!p.path("lockfiles/claude.lock.json").exists());

    // The same manifest with a broken skill is exit 2: validation comes first.
    p.write("agents/claude/skills/review/SKILL.md", "no front matter\n");
    let bad = p.bottle(&["lock", "claude", "--offline"], None, &[]);
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[test]
fn claude_recipe_pins_the_published_binary() {
    let recipe: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lock_support::repo().join("images/claude-code.json")).unwrap(),
    )
    .unwrap();
    let f = &recipe["fetch"][0];
    assert!(
        f["url"]
            .as_str()
            .unwrap()
            .starts_with("https://downloads.claude.ai/claude-code-releases/")
    );
    assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
}
