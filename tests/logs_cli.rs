//! `bottle logs`: reads a run's audit record from the state directory, as a
//! table or as the JSON lines recorded, the rotated part first; a run with
//! no record fails (exit 1) and a malformed run id is bad usage (exit 2).

use std::process::Command;

fn logs(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .arg("logs")
        .args(args)
        .env("BOTTLE_STATE_DIR", state)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn prints_the_record_oldest_first() {
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let old = r#"{"time":"T1","event":"ready","listen":"0.0.0.0:8888"}"#;
    let new = r#"{"time":"T2","event":"decision","verdict":"deny","reason":"dlp: secret GITHUB_TOKEN (hex) in the body","method":"POST","host":"api.test","port":443}"#;
    std::fs::write(runs.join("hello-ab12cd34.jsonl.1"), format!("{old}\n")).unwrap();
    std::fs::write(runs.join("hello-ab12cd34.jsonl"), format!("{new}\n")).unwrap();

    let (code, out, err) = logs(state.path(), &["hello-ab12cd34", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{old}\n{new}\n"));

    let (code, out, _) = logs(state.path(), &["hello-ab12cd34"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "T1 ready\nT2 deny  POST    api.test:443 dlp: secret GITHUB_TOKEN (hex) in the body\n"
    );

    let (code, _, err) = logs(state.path(), &["hello-00000000"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no audit record for run `hello-00000000`"),
        "{err}"
    );

    let (code, _, err) = logs(state.path(), &["../etc/passwd"]);
    assert_eq!(code, 2, "{err}");
}
