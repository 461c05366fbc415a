//! The builtin sidecar image through the real Docker engine: it is built from
//! the `bottle` binary, loads with its config digest as image ID, and a
//! container of it (read-only rootfs, every capability dropped, non-root)
//! takes its config on stdin, forwards an allowed request to a test upstream
//! container and refuses a denied CONNECT. All containers sit on an internal
//! network the test creates; nothing reaches beyond it.

mod common;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, WaitContainerOptions,
};
use bottle::egress::config::{EgressConfig, RunOptions};
use bottle::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};
use bottle::oci::{BlobStore, build};
use bottle::policy::{Egress, Limits, Policy, Sidecar, SidecarKind};
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;

const MARKER: &str = "bottle-egress-upstream-marker-7f3a";

fn labels() -> HashMap<String, String> {
    HashMap::from([(common::TEST_LABEL.to_string(), "1".to_string())])
}

async fn logs(docker: &Docker, name: &str) -> String {
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    };
    let mut out = String::new();
    let mut l = docker.logs(name, Some(opts));
    while let Some(Ok(chunk)) = l.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

async fn create(docker: &Docker, name: &str, body: ContainerCreateBody) {
    let opts = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    docker
        .create_container(Some(opts), body)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn on_network(net: &str, alias: &str) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            net.to_string(),
            EndpointSettings {
                aliases: Some(vec![alias.to_string()]),
                ..Default::default()
            },
        )])),
    }
}

#[tokio::test]
async fn builtin_image_loads_and_its_container_enforces_the_policy() {
    if !common::require_busybox() {
        return;
    }
    let Some(docker) = common::require_docker().await else {
        return;
    };
    let pid = std::process::id();
    let net = format!("bottle-test-egress-{pid}");
    let names = [
        format!("bottle-test-egress-upstream-{pid}"),
        format!("bottle-test-egress-proxy-{pid}"),
        format!("bottle-test-egress-client-{pid}"),
    ];
    let upstream_tag = format!("bottle-test/egress-upstream:{pid}");
    let cache = tempfile::tempdir().unwrap();
    let store = BlobStore::open(cache.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_bottle"));

    let body = AssertUnwindSafe(async {
        // The image: ID = config digest, and a second call skips the load.
        let id = bottle::egress::image::ensure_image_from(&docker, exe, &store)
            .await
            .unwrap();
        let built = bottle::egress::image::build_image(exe, &store).unwrap();
        assert_eq!(id, built.config_digest);
        let inspect = docker.inspect_image(&id).await.unwrap();
        assert_eq!(inspect.id.as_deref(), Some(id.as_str()));
        let cfg = inspect.config.unwrap();
        assert_eq!(cfg.user.as_deref(), Some(bottle::egress::image::SIDECAR_USER));
        let again = bottle::egress::image::ensure_image_from(&docker, exe, &store)
            .await
            .unwrap();
        assert_eq!(again, id);

        // The upstream: busybox httpd serving a marker file.
        let mut spec = common::busybox_spec();
        spec.layers.push(LayerSpec {
            name: "www".into(),
            entries: vec![Entry {
                path: "www/index.html".into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: EntryKind::File(FileSource::Bytes(MARKER.as_bytes().to_vec())),
            }],
        });
        for applet in ["httpd", "printf"] {
            spec.layers[0].entries.push(Entry {
                path: format!("bin/{applet}"),
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: EntryKind::Symlink("busybox".into()),
            });
        }
        let up = build(&spec, &store).unwrap();
        let bytes = bottle::oci::archive::archive_bytes(&up, &store, std::slice::from_ref(&upstream_tag)).unwrap();
        let opts = bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut s = docker.import_image(opts, bollard::body_full(bytes.into()), None);
        while let Some(item) = s.next().await {
            item.expect("docker load of the upstream image");
        }

        docker
            .create_network(NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                internal: Some(true),
                labels: Some(labels()),
                ..Default::default()
            })
            .await
            .unwrap();

        create(
            &docker,
            &names[0],
            ContainerCreateBody {
                image: Some(upstream_tag.clone()),
                cmd: Some(vec!["httpd".into(), "-f".into(), "-p".into(), "80".into(), "-h".into(), "/www".into()]),
                labels: Some(labels()),
                host_config: Some(HostConfig {
                    network_mode: Some(net.clone()),
                    ..Default::default()
                }),
                networking_config: Some(on_network(&net, "web.upstream.test")),
                ..Default::default()
            },
        )
        .await;
        docker.start_container(&names[0], None).await.unwrap();

        // The sidecar, locked down as the runner will run it.
        create(
            &docker,
            &names[1],
            ContainerCreateBody {
                image: Some(id.clone()),
                cmd: Some(vec!["--config".into(), "-".into(), "--listen".into(), "0.0.0.0:8888".into()]),
                open_stdin: Some(true),
                stdin_once: Some(true),
                attach_stdin: Some(true),
                labels: Some(labels()),
                host_config: Some(HostConfig {
                    network_mode: Some(net.clone()),
                    readonly_rootfs: Some(true),
                    cap_drop: Some(vec!["ALL".into()]),
                    security_opt: Some(vec!["no-new-privileges".into()]),
                    ..Default::default()
                }),
                networking_config: Some(on_network(&net, "proxy")),
                ..Default::default()
            },
        )
        .await;
        let attach = docker
            .attach_container(
                &names[1],
                Some(AttachContainerOptions {
                    stdin: true,
                    stream: true,
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        docker.start_container(&names[1], None).await.unwrap();
        let policy = Policy {
            schema: 1,
            agent: "test".into(),
            egress: Egress {
                allow: vec!["web.upstream.test".into()],
                ssh: vec![],
            },
            env: vec![],
            sidecar: Sidecar {
                kind: SidecarKind::Builtin,
                image: None,
            },
            limits: Limits::default(),
            secrets: vec![],
        };
        let opts = RunOptions {
            // The upstream sits on a private bridge address.
            trusted: vec!["web.upstream.test".into()],
            ..RunOptions::default()
        };
        let config = EgressConfig::from_policy(&policy, &opts).unwrap().to_file_text();
        let mut input = attach.input;
        input.write_all(config.as_bytes()).await.unwrap();
        input.shutdown().await.unwrap();
        drop(input);
        let started = Instant::now();
        let ready = loop {
            let l = logs(&docker, &names[1]).await;
            if l.contains("\"event\":\"ready\"") {
                break l;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "proxy not ready: {l}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(ready.contains("0.0.0.0:8888"), "{ready}");

        let proxy = docker.inspect_container(&names[1], None).await.unwrap();
        let hc = proxy.host_config.unwrap();
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(proxy.config.unwrap().user.as_deref(), Some(bottle::egress::image::SIDECAR_USER));
        let proxy_ip = proxy.network_settings.unwrap().networks.unwrap()[&net]
            .ip_address
            .clone()
            .unwrap();

        // The client: an allowed plain-HTTP request through the proxy, then a
        // denied CONNECT.
        let script = format!(
            "wget -q -O - http://web.upstream.test/index.html; echo; echo wget_rc=$?; \
             (printf 'CONNECT denied.test:443 HTTP/1.1\\r\\nHost: denied.test:443\\r\\n\\r\\n'; sleep 2) | nc -w 5 {proxy_ip} 8888"
        );
        create(
            &docker,
            &names[2],
            ContainerCreateBody {
                image: Some(upstream_tag.clone()),
                cmd: Some(vec!["sh".into(), "-c".into(), script]),
                env: Some(vec![format!("http_proxy=http://{proxy_ip}:8888")]),
                labels: Some(labels()),
                host_config: Some(HostConfig {
                    network_mode: Some(net.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        docker.start_container(&names[2], None).await.unwrap();
        let mut w = docker.wait_container(&names[2], None::<WaitContainerOptions>);
        while let Some(r) = w.next().await {
            let _ = r;
        }
        let client = logs(&docker, &names[2]).await;
        assert!(client.contains(MARKER), "allowed request did not return the upstream's bytes: {client}");
        assert!(client.contains("HTTP/1.1 403"), "denied CONNECT not refused: {client}");

        let proxy_logs = logs(&docker, &names[1]).await;
        let decisions: Vec<serde_json::Value> = proxy_logs
            .lines()
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .filter(|v: &serde_json::Value| v["event"] == "decision")
            .collect();
        assert!(
            decisions.iter().any(|d| d["verdict"] == "allow" && d["host"] == "web.upstream.test"),
            "{proxy_logs}"
        );
        assert!(
            decisions.iter().any(|d| d["verdict"] == "deny"
                && d["host"] == "denied.test"
                && d["reason"] == "host not in allowlist"),
            "{proxy_logs}"
        );
    })
    .catch_unwind()
    .await;

    let rm = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    for n in &names {
        let _ = docker.remove_container(n, Some(rm.clone())).await;
    }
    let _ = docker.remove_network(&net).await;
    let opts = RemoveImageOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_image(&upstream_tag, Some(opts), None).await;
    if let Err(p) = body {
        std::panic::resume_unwind(p);
    }
}
