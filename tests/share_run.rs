//! A bottle moved through a file runs identically on the other side: the
//! runner's test agent, exported from its registry and imported from an
//! empty cache into a second registry, keeps its digest, and `bottle run` of
//! that second reference prints exactly what a run from the first one does
//! (same user, same hardening, same files, same policy).

mod common;
mod run_common;

use run_common::{Cleanup, fixture};

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_bottle_runs_like_the_original() {
    let agent = "sharerun";
    let Some(fx) = fixture(agent, &[]).await else {
        return;
    };
    let _c = Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    };
    let Some(reg2) = common::Registry::start() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("sharerun.tar");
    let file = file.to_str().unwrap();

    // The fixture's lockfile is the runner's minimal one, so name the image
    // in full; the empty cache makes export pull it by digest.
    let original = format!("{}/bottle/{agent}@{}", fx.reg.localhost(), fx.digest);
    let cache1 = tempfile::tempdir().unwrap();
    let c1 = cache1.path().to_str().unwrap();
    let e = fx.bottle(
        &["export", &original, "-o", file],
        &[("BOTTLE_CACHE_DIR", c1)],
    );
    assert_eq!(e.code, 0, "{e:?}");

    let cache2 = tempfile::tempdir().unwrap();
    let c2 = cache2.path().to_str().unwrap();
    let r2 = reg2.localhost();
    let i = fx.bottle(
        &["import", file],
        &[("BOTTLE_CACHE_DIR", c2), ("BOTTLE_REGISTRY", &r2)],
    );
    assert_eq!(i.code, 0, "{i:?}");
    let imported = i.stdout.trim().to_string();
    assert_eq!(imported, format!("{r2}/bottle/{agent}@{}", fx.digest));

    let script = "id; pwd; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; ls -la /bin; sha256sum /bin/busybox; echo done";
    let mut outputs = Vec::new();
    for reference in [&original, &imported] {
        let o = fx.bottle(&["run", "--yes", reference, "--", "sh", "-c", script], &[]);
        assert_eq!(o.code, 0, "{reference}: {o:?}");
        assert!(o.stdout.contains("uid=1000"), "{reference}: {o:?}");
        assert!(o.stdout.contains("done"), "{reference}: {o:?}");
        outputs.push(o.stdout);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "the imported bottle behaves differently"
    );
}
