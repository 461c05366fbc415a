//! `lock` refuses an agent the engine could not run: more skills than
//! layers the engine stacks ("max depth exceeded" at run time) is bad input,
//! exit 2, naming the file, the field and the limit, before any build.

mod common;
mod lock_support;

use lock_support::{Project, Variation};

#[test]
fn lock_refuses_more_skills_than_the_limit_naming_file_and_field() {
    let p = Project::new(&["hello"], Variation::default());
    let n = bottle::manifest::MAX_SKILLS + 1;
    let mut list = Vec::new();
    for i in 0..n {
        p.write(
            &format!("agents/hello/skills/s{i}/SKILL.md"),
            format!("---\nname: s{i}\ndescription: skill {i}\n---\n"),
        );
        list.push(serde_json::json!(format!("skills/s{i}")));
    }
    p.edit_json("agents/hello/bottle.json", |v| {
        v["skills"] = serde_json::Value::Array(list)
    });
    let before = p.read("lockfiles/hello.lock.json");
    let out = p.bottle(&["lock", "hello"], None, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("agents/hello/bottle.json"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("101 skills listed; at most 100 are allowed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("skills"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(p.read("lockfiles/hello.lock.json"), before);
    // Nothing was built either.
    let blobs = p.cache.path().join("oci/blobs/sha256");
    let built = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(built, 0, "lock built blobs before refusing");
}
