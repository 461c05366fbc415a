//! A Debian package base end to end, against the real archive the host's
//! apt sources name: a recipe of ~20 packages resolves its closure, locks,
//! builds and runs in a real bottle (`dpkg` lists exactly the locked set;
//! git, ssh and rg run; TLS to a server whose certificate comes from a CA
//! the recipe added to the bundle verifies, and one from another CA does
//! not); a second, different copy of the project gives the same digest; the
//! rebuild works offline from the fetch cache. One build, downloads shared
//! between test projects (see `lock_support`).

mod common;
mod lock_support;

use lock_support::{Project, Variation, digest_of};

const PACKAGES: &[&str] = &[
    "base-files",
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "dash",
    "debianutils",
    "diffutils",
    "dpkg",
    "findutils",
    "git",
    "grep",
    "gzip",
    "less",
    "libc-bin",
    "mawk",
    "openssh-client",
    "openssl",
    "procps",
    "ripgrep",
    "sed",
    "tar",
];

/// (CA PEM, server cert PEM, server key PEM) for `localhost`.
fn tls_chain() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bottle test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn project(
    v: Variation,
    nest: Option<&str>,
    tls: &(String, String, String),
    other: &(String, String, String),
) -> Project {
    let p = Project::new_in(nest, &["hello"], v);
    std::fs::rename(p.path("agents/hello"), p.path("agents/deb")).unwrap();
    p.edit_json("agents/deb/bottle.json", |m| m["image"] = "deb".into());
    p.write("images/tls/ca.crt", &tls.0);
    p.write("images/tls/srv.crt", &tls.1);
    p.write("images/tls/srv.key", &tls.2);
    p.write("images/tls/other.crt", &other.1);
    p.write("images/tls/other.key", &other.2);
    p.write(
        "images/deb.json",
        serde_json::to_vec_pretty(&serde_json::json!({
            "schema": 1,
            "from": "scratch",
            "packages": { "include": PACKAGES },
            "files": {
                "/usr/local/share/ca-certificates/bottle-test.crt": "tls/ca.crt",
                "/etc/bottle-test": "tls",
            },
            "env": { "LANG": "C.UTF-8" },
        }))
        .unwrap(),
    );
    p
}

const SCRIPT: &str = "set -e
dpkg-query -W -f '${Package}\\n' | sort > /tmp/dpkg
cat /tmp/dpkg | tr '\\n' ' '; echo
git --version; ssh -V 2>&1; rg --version | head -n1
openssl s_server -quiet -www -accept 8443 -cert /etc/bottle-test/srv.crt -key /etc/bottle-test/srv.key >/dev/null 2>&1 &
openssl s_server -quiet -www -accept 8444 -cert /etc/bottle-test/other.crt -key /etc/bottle-test/other.key >/dev/null 2>&1 &
sleep 1
echo good=$(curl -sS -o /dev/null -w '%{http_code}' https://localhost:8443/ 2>&1 || true)
echo bad=$(curl -sS -o /dev/null -w '%{http_code}' https://localhost:8444/ 2>&1 || echo refused)
";

#[test]
fn a_debian_package_base_locks_builds_runs_and_rebuilds_offline() {
    let Some(reg) = common::Registry::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    if rt.block_on(common::require_docker()).is_none() {
        return;
    }
    let (tls, other) = (tls_chain(), tls_chain());
    let a = project(Variation::default(), None, &tls, &other);
    let out = a.bottle(&["lock", "deb"], Some(&reg.host()), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let digest = digest_of(&out);
    let lock: serde_json::Value =
        serde_json::from_slice(&a.read("lockfiles/deb.lock.json")).unwrap();
    let mut locked: Vec<String> = lock["packages"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    locked.sort();
    for want in PACKAGES {
        assert!(locked.iter().any(|n| n == want), "{want} not locked");
    }
    assert!(
        locked.len() > PACKAGES.len(),
        "the closure adds dependencies (libc6, …)"
    );
    assert!(locked.iter().any(|n| n == "libc6"));
    for p in lock["packages"]["packages"].as_array().unwrap() {
        assert!(p["path"].as_str().unwrap().starts_with("pool/"), "{p}");
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
    }

    let run = a.bottle(
        &[
            "run",
            "deb",
            "-y",
            "--allow-unpatched-engine",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ],
        Some(&reg.host()),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let listed: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        listed,
        locked.iter().map(String::as_str).collect::<Vec<_>>(),
        "dpkg lists exactly the locked set"
    );
    assert!(run.stdout.contains("git version 2."), "{run:?}");
    assert!(run.stdout.contains("OpenSSH_"), "{run:?}");
    assert!(run.stdout.contains("ripgrep "), "{run:?}");
    assert!(
        run.stdout.contains("good=200"),
        "the recipe's CA is in the bundle: {run:?}"
    );
    assert!(
        !run.stdout.contains("bad=200"),
        "a CA outside the bundle must not verify: {run:?}"
    );

    // A different copy (path, umask, modes, mtimes, cache) gives the same image.
    let b = project(
        Variation {
            reverse: true,
            tight_modes: true,
            mtime: Some(1_234_567_890),
        },
        Some("deeper copy"),
        &tls,
        &other,
    );
    let out_b = b.bottle_with(
        &["lock", "deb"],
        Some(&reg.host()),
        &[("TZ", "Pacific/Chatham")],
        Some(0o077),
    );
    assert_eq!(out_b.code, 0, "{out_b:?}");
    assert_eq!(digest_of(&out_b), digest);

    // Offline: check rebuilds from the pins and the fetch cache only.
    let check = a.bottle(&["check", "deb", "--offline"], Some(&reg.host()), &[]);
    assert_eq!(check.code, 0, "{check:?}");
}
