//! `bottle run` before anything starts: `--dry-run` needs no engine (a dead
//! `DOCKER_HOST` is fine) and shows the plan, human and JSON, with the
//! preflight egress line in the original project's format and no secret
//! values; tags are refused; without a terminal and without `--yes` the run
//! is refused with exit 2; an engine older than 25.0.5 is refused (exit 3)
//! unless the caller opts in.

mod common;
mod run_common;

/// The original project's seven default hosts (its "7 hosts allowed"
/// example).
const DEFAULT_ALLOW: &[&str] = &[
    "api.anthropic.com",
    "claude.ai",
    "console.anthropic.com",
    "platform.claude.com",
    "statsig.anthropic.com",
    "sentry.io",
    "downloads.claude.ai",
];
use run_common::lock_only_root;

const SECRET: &str = "s3cr3t-value-never-printed";
const TOKEN: &str = "oauth-token-never-printed";

fn dead_engine_env(root: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("DOCKER_HOST", "unix:///nonexistent.sock".into()),
        ("BOTTLE_ROOT", root.display().to_string()),
        ("GITHUB_TOKEN", SECRET.into()),
        ("CLAUDE_BOTTLE_OAUTH_TOKEN", TOKEN.into()),
    ]
}

fn run(args: &[&str], root: &std::path::Path, env: &[(&'static str, String)]) -> common::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::run_bottle(args, root, &env)
}

#[test]
fn dry_run_needs_no_engine_and_prints_the_plan_without_secrets() {
    let root = lock_only_root("dry", DEFAULT_ALLOW, &["GITHUB_TOKEN", "NOT_SET_ON_HOST_X"]);
    let env = dead_engine_env(root.path());
    let out = run(
        &["run", "--dry-run", "dry", "--", "echo", "hi"],
        root.path(),
        &env,
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let o = &out.stdout;
    assert!(
        o.contains(
            "egress: 7 hosts allowed (api.anthropic.com, claude.ai, console.anthropic.com, +4 more)"
        ),
        "{o}"
    );
    assert!(o.contains("GITHUB_TOKEN"), "{o}");
    assert!(o.contains("NOT_SET_ON_HOST_X (unset)"), "{o}");
    assert!(
        o.contains("CLAUDE_CODE_OAUTH_TOKEN (from CLAUDE_BOTTLE_OAUTH_TOKEN)"),
        "{o}"
    );
    assert!(o.contains("ssh: port 22 to github.com"), "{o}");
    assert!(o.contains("sidecar config:"), "{o}");
    assert!(o.contains("api_allowlist"), "{o}");
    for s in [SECRET, TOKEN] {
        assert!(
            !o.contains(s) && !out.stderr.contains(s),
            "secret printed:\n{o}\n{}",
            out.stderr
        );
    }
}

#[test]
fn dry_run_json_for_nine_hosts() {
    let mut allow: Vec<&str> = DEFAULT_ALLOW.to_vec();
    allow.push("api.openai.com");
    allow.push("github.com");
    let root = lock_only_root("dryjson", &allow, &["GITHUB_TOKEN"]);
    let env = dead_engine_env(root.path());
    let out = run(
        &["run", "--dry-run", "--json", "dryjson"],
        root.path(),
        &env,
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["plan"]["egress_summary"],
        "9 hosts allowed (api.anthropic.com, api.openai.com, claude.ai, +6 more)"
    );
    assert_eq!(v["plan"]["agent"], "dryjson");
    assert!(
        v["plan"]["container"]["name"]
            .as_str()
            .unwrap()
            .starts_with("bottle-dryjson-")
    );
    assert!(
        v["sidecar_config"]
            .as_str()
            .unwrap()
            .contains("api.openai.com")
    );
    for s in [SECRET, TOKEN] {
        assert!(!out.stdout.contains(s), "secret in JSON plan");
    }
}

#[test]
fn tags_are_refused() {
    let root = lock_only_root("tagged", &["example.com"], &[]);
    let env = dead_engine_env(root.path());
    let out = run(&["run", "--dry-run", "tagged:latest"], root.path(), &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("runs by digest"), "{}", out.stderr);
}

#[test]
fn no_terminal_without_yes_is_refused_with_exit_2() {
    let root = lock_only_root("notty", &["example.com"], &[]);
    let env = dead_engine_env(root.path());
    let out = run(&["run", "notty", "--", "true"], root.path(), &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("pass --yes"), "{}", out.stderr);
}

#[tokio::test]
async fn an_unpatched_engine_is_refused_without_the_opt_in() {
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let v = bottle::engine::version(&docker).await.unwrap();
    let root = lock_only_root("unpatched", &["example.com"], &[]);
    let env = vec![
        ("BOTTLE_ROOT", root.path().display().to_string()),
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "0".to_string()),
    ];
    let out = run(
        &["run", "--yes", "unpatched", "--", "true"],
        root.path(),
        &env,
    );
    if v.patched() {
        // A patched engine goes on to the pull, which fails: the lockfile's
        // digest was never pushed anywhere.
        assert_ne!(out.code, 0);
        assert!(!out.stderr.contains("CVE-2024-29018"), "{}", out.stderr);
    } else {
        assert_eq!(out.code, 3, "{}", out.stderr);
        assert!(out.stderr.contains(&v.raw), "{}", out.stderr);
        assert!(out.stderr.contains("CVE-2024-29018"), "{}", out.stderr);
        assert!(
            out.stderr.contains("--allow-unpatched-engine"),
            "{}",
            out.stderr
        );
    }
}
