//! Sidecar-held secrets end to end on loopback: the proxy in-process with a
//! vault (as `bottle proxy --secrets-stdin` builds it), test TLS upstreams
//! with a test CA that record what they receive. Real values reach only the
//! bound host's bound header; every exfiltration shape the issue lists is
//! refused with a decision naming the secret, never the value; fronting
//! inside an intercepted tunnel is refused; an upstream whose certificate
//! does not verify is refused and no leaf is minted. Nothing leaves the
//! machine: every name resolves through a static table to 127.0.0.1.

mod egress_support;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bottle::egress::config::RunOptions;
use bottle::egress::proxy::secrets::{ApiRoute, CaKey, DlpPattern, Message, SecretEntry, Vault};
use bottle::egress::proxy::{LogSink, Proxy, Resolver, Settings};
use egress_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "sk-ant-oat01-CanaryToken0123456789abcdefGHIJ";
const GH: &str = "ghp_CanaryGithub0123456789abcdefghijklmn";

/// A custom secret pattern the run adds to the defaults.
fn secrets_dlp_custom() -> DlpPattern {
    DlpPattern {
        name: "internal ticket key".into(),
        regex: "tkt_[0-9]{12}".into(),
    }
}

/// What an upstream received: one line per request,
/// `host|path|authorization|body`.
type Seen = Arc<Mutex<Vec<String>>>;

struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn test_ca(cn: &str) -> TestCa {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn server_config(ca: &TestCa, names: &[&str]) -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap(),
    )
}

/// HTTPS upstream recording each request; answers `ok <authorization>` so a
/// response that echoes the credential can be checked for scrubbing. A
/// path `/stream` answers in two chunks 300 ms apart.
async fn recording_upstream(server: Arc<rustls::ServerConfig>, seen: Seen) -> SocketAddr {
    use http_body_util::BodyExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (host, auth, key) = (h("host"), h("authorization"), h("x-api-key"));
                            let path = req.uri().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(format!(
                                "{host}|{path}|{auth}{key}|{}",
                                String::from_utf8_lossy(&body)
                            ));
                            let resp: hyper::Response<
                                http_body_util::combinators::BoxBody<
                                    bytes::Bytes,
                                    std::convert::Infallible,
                                >,
                            > = if path == "/stream" {
                                let (tx, rx) = tokio::sync::mpsc::channel::<
                                    Result<
                                        hyper::body::Frame<bytes::Bytes>,
                                        std::convert::Infallible,
                                    >,
                                >(2);
                                tokio::spawn(async move {
                                    let _ = tx
                                        .send(Ok(hyper::body::Frame::data(bytes::Bytes::from(
                                            "first;",
                                        ))))
                                        .await;
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    let _ = tx
                                        .send(Ok(hyper::body::Frame::data(bytes::Bytes::from(
                                            "second",
                                        ))))
                                        .await;
                                });
                                hyper::Response::new(
                                    http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed(),
                                )
                            } else {
                                hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(format!(
                                        "ok {auth}{key}"
                                    )))
                                    .boxed(),
                                )
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct World {
    proxy: Running,
    seen: Seen,
    run_ca: rustls::RootCertStore,
    upstream_roots: rustls::RootCertStore,
    placeholder_token: String,
    placeholder_gh: String,
}

async fn world() -> World {
    let upstream_ca = test_ca("upstream test CA");
    let rogue_ca = test_ca("rogue CA");
    let seen: Seen = Arc::default();
    let good = recording_upstream(
        server_config(
            &upstream_ca,
            &["api.test", "github.test", "other.test", "x.example.test"],
        ),
        seen.clone(),
    )
    .await;
    let bad = recording_upstream(server_config(&rogue_ca, &["rogue.test"]), seen.clone()).await;
    let mut map: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    for h in ["api.test", "github.test", "other.test", "x.example.test"] {
        map.insert(h.into(), vec![good]);
    }
    map.insert("rogue.test".into(), vec![bad]);
    let names = [
        "api.test",
        "github.test",
        "other.test",
        "rogue.test",
        "*.example.test",
    ];
    let p = policy(&names, &[]);
    let opts = RunOptions {
        trusted: vec![
            "api.test".into(),
            "github.test".into(),
            "other.test".into(),
            "rogue.test".into(),
            "x.example.test".into(),
        ],
        ..RunOptions::default()
    };
    let mut upstream_roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(upstream_ca.pem.as_bytes()) {
            upstream_roots.add(c.unwrap()).unwrap();
        }
    }
    let run_key = rcgen::KeyPair::generate().unwrap();
    let cn = bottle::egress::proxy::secrets::ca_common_name("test-run");
    let run_cert = bottle::egress::proxy::intercept::ca_params(&cn)
        .self_signed(&run_key)
        .unwrap();
    let mut run_ca = rustls::RootCertStore::empty();
    run_ca.add(run_cert.der().clone()).unwrap();
    let placeholder_token = bottle::egress::proxy::secrets::placeholder(TOKEN);
    let placeholder_gh = bottle::egress::proxy::secrets::placeholder(GH);
    let message = Message {
        secrets: vec![
            SecretEntry {
                name: "CLAUDE_CODE_OAUTH_TOKEN".into(),
                value: TOKEN.into(),
                placeholder: placeholder_token.clone(),
                hosts: vec![],
                header: None,
            },
            SecretEntry {
                name: "GITHUB_TOKEN".into(),
                value: GH.into(),
                placeholder: placeholder_gh.clone(),
                hosts: vec!["github.test".into(), "rogue.test".into()],
                header: Some("bearer".into()),
            },
        ],
        api_route: Some(ApiRoute {
            host: "api.test".into(),
            secret: "CLAUDE_CODE_OAUTH_TOKEN".into(),
            header: "bearer".into(),
        }),
        upstream_ca_pem: Some(upstream_ca.pem.clone()),
        intercept_ca: Some(CaKey {
            common_name: cn,
            key_pem: run_key.serialize_pem(),
        }),
        max_body_bytes: Some(1 << 20),
        dlp_patterns: vec![secrets_dlp_custom()],
    };
    // Through the wire format, as the sidecar reads it.
    let json = serde_json::to_vec(&message).unwrap();
    let message = bottle::egress::proxy::secrets::read_message(json.as_slice())
        .await
        .unwrap();
    let vault = Vault::from_message(message).unwrap();
    let config = bottle::egress::config::EgressConfig::from_policy(&p, &opts).unwrap();
    let config = bottle::egress::config::parse(&config.to_file_text(), "test").unwrap();
    let settings = Settings::from_config(&config, &[]).unwrap();
    let (tx, logs) = tokio::sync::mpsc::unbounded_channel();
    let proxy = Proxy::with_vault(
        settings,
        Resolver::Static(map),
        LogSink::Channel(tx),
        Some(vault),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bottle::egress::proxy::serve(proxy, listener, async move {
        let _ = stopped.await;
    }));
    World {
        proxy: Running {
            addr,
            logs,
            _stop: stop,
        },
        seen,
        run_ca,
        upstream_roots,
        placeholder_token,
        placeholder_gh,
    }
}

impl World {
    /// Every log line so far, as text.
    fn drain_logs(&mut self) -> String {
        let mut out = String::new();
        while let Ok(v) = self.proxy.logs.try_recv() {
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// A raw request to the API route; returns status and body.
    async fn api(&self, head_and_body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(self.proxy.addr).await.unwrap();
        s.write_all(head_and_body).await.unwrap();
        let (code, _, body) = read_response(&mut s).await;
        (code, String::from_utf8_lossy(&body).to_string())
    }

    /// TLS to `host` through CONNECT with the run CA trusted.
    async fn intercepted(
        &self,
        host: &str,
    ) -> (u16, Option<tokio_rustls::client::TlsStream<TcpStream>>) {
        let (code, s) = connect(self.proxy.addr, &format!("{host}:443")).await;
        if code != 200 {
            return (code, None);
        }
        let tls = tls_client(Arc::new(self.run_ca.clone()), true)
            .connect(
                rustls::pki_types::ServerName::try_from(host.to_string()).unwrap(),
                s,
            )
            .await
            .expect("the agent trusts the run CA's leaf");
        (code, Some(tls))
    }
}

async fn exchange(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    req: &str,
) -> (u16, String) {
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            if buf.len() >= pos + 4 + len {
                let code = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (
                    code,
                    String::from_utf8_lossy(&buf[pos + 4..pos + 4 + len]).to_string(),
                );
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("answer within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return (0, String::from_utf8_lossy(&buf).to_string());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn post(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: sidecar:8888\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn api_route_injects_the_real_token_and_the_agent_holds_only_the_placeholder() {
    let mut w = world().await;
    let ph = w.placeholder_token.clone();
    assert_ne!(ph, TOKEN);
    assert!(ph.starts_with("sk-ant-oat01-") && ph.len() == TOKEN.len());
    let (code, body) = w
        .api(&post(
            "/v1/messages",
            &format!("Authorization: Bearer {ph}\r\n"),
            b"{\"model\":\"m\"}",
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    // The upstream got the real token in the bearer header...
    let seen = w.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0],
        format!("api.test|/v1/messages|Bearer {TOKEN}|{{\"model\":\"m\"}}")
    );
    // ...and its echo of it came back as the placeholder.
    assert_eq!(body, format!("ok Bearer {ph}"));
    let logs = w.drain_logs();
    assert!(logs.contains("injected CLAUDE_CODE_OAUTH_TOKEN"), "{logs}");
    assert!(!logs.contains(TOKEN) && !logs.contains(GH), "{logs}");
}

#[tokio::test]
async fn api_route_streams_without_buffering() {
    let w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: sidecar:8888\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, _, mut first) = read_head(&mut s).await;
    assert_eq!(code, 200);
    while !String::from_utf8_lossy(&first).contains("first;") {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        first.extend_from_slice(&b[..n]);
    }
    // The first chunk arrives before the upstream sends the second (300 ms).
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    assert!(!String::from_utf8_lossy(&first).contains("second"));
}

#[tokio::test]
async fn exfiltration_of_the_canary_is_refused_in_every_shape() {
    let mut w = world().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(format!("{{\"leak\":\"{TOKEN}\"}}").as_bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("query", post(&format!("/v1/messages?q={TOKEN}"), "", b"")),
        ("path", post(&format!("/v1/{TOKEN}"), "", b"")),
        (
            "header",
            post("/v1/messages", &format!("X-Leak: {GH}\r\n"), b""),
        ),
        (
            "json body",
            post(
                "/v1/messages",
                "Content-Type: application/json\r\n",
                format!("{{\"text\":\"{TOKEN}\"}}").as_bytes(),
            ),
        ),
        (
            "gzip body",
            post("/v1/messages", "Content-Encoding: gzip\r\n", &gz),
        ),
        (
            "base64",
            post(
                "/v1/messages",
                "",
                b64.encode(format!("leak:{GH}")).as_bytes(),
            ),
        ),
        (
            "hex",
            post("/v1/messages", "", hex::encode(TOKEN).as_bytes()),
        ),
        (
            "url-encoded",
            post(
                &format!("/v1/messages?q={}", TOKEN.replace('-', "%2d")),
                "",
                b"",
            ),
        ),
    ];
    for (what, req) in cases {
        let (code, body) = w.api(&req).await;
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains("dlp: secret"), "{what}: {body}");
        assert!(!body.contains(TOKEN) && !body.contains(GH), "{what}");
        let d = w.proxy.decision().await;
        assert_eq!(d["verdict"], "deny", "{what}");
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("secret"), "{what}: {reason}");
        assert!(
            !reason.contains(TOKEN) && !reason.contains(GH),
            "{what}: {reason}"
        );
    }
    assert!(
        w.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        w.seen()
    );
    assert!(!w.drain_logs().contains(TOKEN));
}

#[tokio::test]
async fn split_across_two_requests_is_not_caught() {
    // Documented limitation (README, "Secrets"): each half alone is not the
    // value, so both pass; the test holds the documentation to the truth.
    let w = world().await;
    let (a, b) = TOKEN.split_at(TOKEN.len() / 2);
    assert_eq!(w.api(&post("/v1/messages", "", a.as_bytes())).await.0, 200);
    assert_eq!(w.api(&post("/v1/messages", "", b.as_bytes())).await.0, 200);
}

#[tokio::test]
async fn secret_in_a_name_under_a_wildcard_is_refused_before_lookup() {
    let mut w = world().await;
    for host in [
        format!("{}.example.test", TOKEN.to_ascii_lowercase()),
        {
            let h = hex::encode(GH);
            format!("{}.{}.example.test", &h[..40], &h[40..])
        },
        "q8zk3pxv7wmn2rtb5yhc9dfg.example.test".to_string(),
    ] {
        let (code, _) = connect(w.proxy.addr, &format!("{host}:443")).await;
        assert_eq!(code, 403, "{host}");
        let d = w.proxy.decision().await;
        assert_eq!(d["verdict"], "deny");
        let line = d.to_string().to_ascii_lowercase();
        assert!(!line.contains(&TOKEN.to_ascii_lowercase()), "{line}");
        assert!(!line.contains(&hex::encode(GH)[..40]), "{line}");
    }
    // An ordinary name under the wildcard still works.
    let (code, _) = connect(w.proxy.addr, "x.example.test:443").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn bound_host_gets_the_real_value_only_in_the_bound_header() {
    let mut w = world().await;
    let ph = w.placeholder_gh.clone();
    let (code, tls) = w.intercepted("github.test").await;
    assert_eq!(code, 200);
    let mut tls = tls.unwrap();
    // Bound header: injected; echoed value scrubbed back to the placeholder.
    let (code, body) = exchange(
        &mut tls,
        &format!("GET /user HTTP/1.1\r\nHost: github.test\r\nAuthorization: Bearer {ph}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, format!("ok Bearer {ph}"));
    // Same host, placeholder in another header: goes out as the placeholder.
    let (code, _) = exchange(
        &mut tls,
        &format!("GET /other HTTP/1.1\r\nHost: github.test\r\nX-Token: {ph}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200);
    let seen = w.seen();
    assert_eq!(seen[0], format!("github.test|/user|Bearer {GH}|"));
    assert_eq!(seen[1], "github.test|/other||");
    assert!(w.drain_logs().contains("\"event\":\"leaf\""));
}

#[tokio::test]
async fn placeholder_to_an_allowed_host_that_is_not_bound_stays_a_placeholder() {
    let w = world().await;
    // other.test is not bound: a plain tunnel, the proxy never sees inside,
    // and the agent only has the placeholder to send.
    let (code, s) = connect(w.proxy.addr, "other.test:443").await;
    assert_eq!(code, 200);
    let ph = w.placeholder_gh.clone();
    let mut tls = tls_client(Arc::new(w.upstream_roots.clone()), true)
        .connect(
            rustls::pki_types::ServerName::try_from("other.test").unwrap(),
            s,
        )
        .await
        .expect("a plain tunnel: the upstream's own certificate");
    let (code, _) = exchange(
        &mut tls,
        &format!("GET /x HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {ph}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(w.seen()[0], format!("other.test|/x|Bearer {ph}|"));
    // The API route to a non-API path with the GitHub placeholder: it is not
    // the route's credential, so it goes out unchanged.
    let ph = w.placeholder_gh.clone();
    let (code, _) = w
        .api(&post("/v1/messages", &format!("X-Gh: {ph}\r\n"), b""))
        .await;
    assert_eq!(code, 200);
    let seen = w.seen();
    assert!(!seen.iter().any(|s| s.contains(GH)), "{seen:?}");
}

#[tokio::test]
async fn fronting_inside_an_intercepted_tunnel_is_refused() {
    let w = world().await;
    let ph = w.placeholder_gh.clone();
    // Host names another (allowed) host.
    let (_, tls) = w.intercepted("github.test").await;
    let (code, _) = exchange(
        &mut tls.unwrap(),
        &format!("GET / HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {ph}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 421);
    // A second request on a kept-alive connection naming another host.
    let (_, tls) = w.intercepted("github.test").await;
    let mut tls = tls.unwrap();
    let (code, _) = exchange(&mut tls, "GET /a HTTP/1.1\r\nHost: github.test\r\n\r\n").await;
    assert_eq!(code, 200);
    let (code, _) = exchange(
        &mut tls,
        &format!("GET /b HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {ph}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 421);
    // Absolute form.
    let (_, tls) = w.intercepted("github.test").await;
    let (code, _) = exchange(
        &mut tls.unwrap(),
        "GET https://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert_eq!(code, 400);
    let seen = w.seen();
    assert_eq!(
        seen,
        vec!["github.test|/a||".to_string()],
        "only the honest request went out"
    );
}

#[tokio::test]
async fn unverifiable_upstream_is_refused_and_no_leaf_is_minted() {
    let mut w = world().await;
    let (code, _) = connect(w.proxy.addr, "rogue.test:443").await;
    assert_eq!(code, 502);
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "deny");
    assert!(
        d["reason"].as_str().unwrap().contains("not intercepted"),
        "{d}"
    );
    let logs = w.drain_logs();
    assert!(!logs.contains("\"event\":\"leaf\""), "{logs}");
    assert!(w.seen().is_empty());
}

#[tokio::test]
async fn plain_http_requests_are_scanned_too() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(
        format!("GET http://other.test/?q={TOKEN} HTTP/1.1\r\nHost: other.test\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (code, _, _) = read_response(&mut s).await;
    assert_eq!(code, 403);
    let d = w.proxy.decision().await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with("dlp: secret CLAUDE_CODE_OAUTH_TOKEN"),
        "{d}"
    );
}

#[tokio::test]
async fn a_body_over_the_scanning_bound_is_refused_not_sent_unscanned() {
    let w = world().await;
    let body = vec![b'a'; (1 << 20) + 1];
    let (code, _) = w.api(&post("/v1/messages", "", &body)).await;
    assert_eq!(code, 413);
    assert!(w.seen().is_empty());
}

/// The reason of the next decision, checked to name `pattern` and not
/// contain `value`.
async fn refused_naming(w: &mut World, pattern: &str, value: &str) {
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "deny", "{d}");
    let reason = d["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(&format!("pattern {pattern}")), "{reason}");
    let logs = w.drain_logs();
    assert!(!reason.contains(value) && !logs.contains(value), "{logs}");
}

#[tokio::test]
async fn provider_keys_the_sidecar_does_not_hold_are_refused_by_pattern() {
    let mut w = world().await;
    // Plain http, key in the query.
    let aws = "AKIAQWERTYUIOPASDFGH";
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(
        format!("GET http://other.test/?k={aws} HTTP/1.1\r\nHost: other.test\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.0, 403);
    refused_naming(&mut w, "AWS access key ID", aws).await;
    // API route, another GitHub token (not the held one) in a header.
    let gh = "ghp_SomeoneElsesToken0123456789abcdefghij";
    let ph = w.placeholder_token.clone();
    let (code, _) = w
        .api(&post(
            "/v1/messages",
            &format!("Authorization: Bearer {ph}\r\nX-Note: {gh}\r\n"),
            b"{}",
        ))
        .await;
    assert_eq!(code, 403);
    refused_naming(&mut w, "GitHub token", gh).await;
    // API route, a private key in the body.
    let pem = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let (code, _) = w
        .api(&post(
            "/v1/messages",
            &format!("Authorization: Bearer {ph}\r\n"),
            format!("{{\"k\":\"{pem}\"}}").as_bytes(),
        ))
        .await;
    assert_eq!(code, 403);
    refused_naming(&mut w, "private key", "PRIVATE KEY-----").await;
    // The run's custom pattern, in a body.
    let tkt = "tkt_123456789012";
    let (code, _) = w
        .api(&post(
            "/v1/messages",
            &format!("Authorization: Bearer {ph}\r\n"),
            tkt.as_bytes(),
        ))
        .await;
    assert_eq!(code, 403);
    refused_naming(&mut w, "internal ticket key", tkt).await;
    assert!(w.seen().is_empty(), "{:?}", w.seen());
}

#[tokio::test]
async fn the_runs_own_placeholders_are_not_pattern_matches() {
    let mut w = world().await;
    let ph = w.placeholder_token.clone();
    let gh = w.placeholder_gh.clone();
    // Both placeholders have provider-key shapes; in a routed body too.
    let (code, body) = w
        .api(&post(
            "/v1/messages",
            &format!("Authorization: Bearer {ph}\r\n"),
            format!("{{\"a\":\"{gh}\",\"b\":\"{ph}\"}}").as_bytes(),
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(w.seen().len(), 1);
    let logs = w.drain_logs();
    assert!(!logs.contains("pattern "), "{logs}");
}
