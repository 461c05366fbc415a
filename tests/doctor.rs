//! `bottle doctor`: one line per fact with what to do, exit 0 exactly when
//! `run` will work as invoked.

mod common;

use serde_json::Value;

fn doctor(env: &[(&str, &str)]) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("BOTTLE_CACHE_DIR", dir.path().to_str().unwrap())];
    all.extend_from_slice(env);
    let o = common::run_bottle(&["doctor", "--json"], dir.path(), &all);
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    (o.code, v)
}

fn fact<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fact {name}: {v}"))
}

#[tokio::test]
async fn doctor_says_whether_run_will_work_and_what_to_do() {
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let raw = docker.version().await.unwrap().version.unwrap();
    let v = bottle::engine::EngineVersion::parse(&raw).unwrap();

    let (code, out) = doctor(&[
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1"),
        ("BOTTLE_REGISTRY", ""),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["run_ready"], true);
    assert!(
        fact(&out, "engine")["detail"]
            .as_str()
            .unwrap()
            .contains(&raw)
    );
    assert!(
        fact(&out, "store")["detail"]
            .as_str()
            .unwrap()
            .contains("oci")
    );
    assert!(
        fact(&out, "disk")["detail"]
            .as_str()
            .unwrap()
            .contains("MiB free")
    );
    assert_eq!(
        fact(&out, "registry")["ok"],
        true,
        "none configured is fine"
    );
    for name in ["dns-fix", "gateway", "userns"] {
        fact(&out, name);
    }

    // Without the opt-in, an unpatched engine means `run` will not work,
    // and the line says exactly which flag it needs.
    let (code, out) = doctor(&[("BOTTLE_ALLOW_UNPATCHED_ENGINE", "0")]);
    if v.patched() {
        assert_eq!(code, 0, "{out}");
    } else {
        assert_eq!(code, 3, "{out}");
        assert_eq!(out["run_ready"], false);
        let dns = fact(&out, "dns-fix");
        assert_eq!(dns["ok"], false);
        assert!(
            dns["fix"]
                .as_str()
                .unwrap()
                .contains("--allow-unpatched-engine"),
            "{dns}"
        );
    }

    // A named registry that is down is a failed line naming it (not fatal
    // for `run`, which works from the local store).
    let (code, out) = doctor(&[
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1"),
        ("BOTTLE_REGISTRY", "127.0.0.1:9"),
    ]);
    assert_eq!(code, 0, "{out}");
    let r = fact(&out, "registry");
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("127.0.0.1:9"), "{r}");
}

#[test]
fn doctor_without_an_engine_is_exit_3_with_what_to_do() {
    let (code, out) = doctor(&[
        (
            "DOCKER_HOST",
            "unix:///nonexistent/bottle-doctor/docker.sock",
        ),
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1"),
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["run_ready"], false);
    let e = fact(&out, "engine");
    assert_eq!(e["ok"], false);
    assert!(e["fix"].as_str().unwrap().contains("DOCKER_HOST"), "{e}");
}

#[tokio::test]
async fn doctor_reports_the_room_for_more_bottles() {
    if common::require_docker().await.is_none() {
        return;
    }
    let (_, out) = doctor(&[
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1"),
        ("BOTTLE_REGISTRY", ""),
    ]);
    let cap = fact(&out, "capacity");
    assert_eq!(cap["ok"], true, "{cap}");
    let detail = cap["detail"].as_str().unwrap();
    for want in [
        "bottles exist",
        "pool 198.18.0.0/15",
        "of 8192 subnets free",
        "MiB memory available",
    ] {
        assert!(detail.contains(want), "missing `{want}`: {detail}");
    }

    // A pool with one slot has no room for a bottle's two networks.
    let (_, out) = doctor(&[
        ("BOTTLE_ALLOW_UNPATCHED_ENGINE", "1"),
        ("BOTTLE_REGISTRY", ""),
        ("BOTTLE_SUBNET_POOL", "10.252.9.0/28"),
    ]);
    let cap = fact(&out, "capacity");
    assert_eq!(cap["ok"], false, "{cap}");
    assert!(
        cap["detail"].as_str().unwrap().contains("room for 0 more"),
        "{cap}"
    );
    assert!(
        cap["fix"].as_str().unwrap().contains("BOTTLE_SUBNET_POOL"),
        "{cap}"
    );
}
