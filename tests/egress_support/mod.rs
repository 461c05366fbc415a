//! Shared fixtures for the egress tests: test upstreams on 127.0.0.1 (a TLS
//! echo server with a test CA, a plain TCP echo, an HTTP server), an
//! in-process proxy with a static resolver the test controls, and raw
//! HTTP/1.1 helpers. Nothing here talks to anything but loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bottle::egress::config::{EgressConfig, RunOptions};
use bottle::egress::proxy::{LogSink, Proxy, Resolver, Settings};
use bottle::policy::{Egress, Limits, Policy, Sidecar, SidecarKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

pub(crate) mod pipelock;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA and a leaf for `names`, as rustls server and client configs.
pub(crate) struct TestPki {
    pub server: Arc<rustls::ServerConfig>,
    pub roots: Arc<rustls::RootCertStore>,
}

pub(crate) fn pki(names: &[&str]) -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bottle test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    TestPki {
        server: Arc::new(server),
        roots: Arc::new(roots),
    }
}

/// TLS echo server: echoes every byte back until the client closes.
pub(crate) async fn tls_echo(server: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Plain TCP echo server (stands in for an ssh server).
pub(crate) async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// HTTP/1.1 server answering every request with
/// `host=<Host>;path=<path>;body=<bytes>` (keep-alive).
pub(crate) async fn http_upstream() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let path = req.uri().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(format!("host={host};path={path};body={body}")),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that accepts connections and reads, but never answers.
pub(crate) async fn mute_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut s, &mut sink).await;
            });
        }
    });
    addr
}

/// A loopback port nothing listens on (bound, then released).
pub(crate) async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub(crate) fn policy(allow: &[&str], ssh: &[&str]) -> Policy {
    Policy {
        schema: 1,
        agent: "test".into(),
        egress: Egress {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ssh: ssh.iter().map(|s| s.to_string()).collect(),
        },
        env: vec![],
        sidecar: Sidecar {
            kind: SidecarKind::Builtin,
            image: None,
        },
        limits: Limits::default(),
        secrets: vec![],
    }
}

pub(crate) struct Running {
    pub addr: SocketAddr,
    pub logs: UnboundedReceiver<serde_json::Value>,
    pub _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// The next decision line (skipping the readiness line).
    pub(crate) async fn decision(&mut self) -> serde_json::Value {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), self.logs.recv())
                .await
                .expect("a log line within 10 s")
                .expect("log channel open");
            if v["event"] == "decision" {
                return v;
            }
        }
    }
}

/// Start the proxy in-process on 127.0.0.1 with the config generated from
/// `policy` + `opts`, the given static resolver and settings tweaks.
pub(crate) async fn start(
    policy: &Policy,
    opts: &RunOptions,
    resolve: HashMap<String, Vec<SocketAddr>>,
    tweak: impl FnOnce(&mut Settings),
) -> Running {
    start_with(policy, opts, Resolver::Static(resolve), tweak).await
}

/// As [`start`], with any resolver.
pub(crate) async fn start_with(
    policy: &Policy,
    opts: &RunOptions,
    resolver: Resolver,
    tweak: impl FnOnce(&mut Settings),
) -> Running {
    let config = EgressConfig::from_policy(policy, opts).unwrap();
    // Through the file format and back, as the sidecar reads it.
    let config = bottle::egress::config::parse(&config.to_file_text(), "test").unwrap();
    let mut settings = Settings::from_config(&config, &policy.egress.ssh).unwrap();
    tweak(&mut settings);
    let (tx, logs) = tokio::sync::mpsc::unbounded_channel();
    let proxy = Proxy::new(settings, resolver, LogSink::Channel(tx));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bottle::egress::proxy::serve(proxy, listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        logs,
        _stop: stop,
    }
}

/// Read one HTTP response head (through the blank line). Returns the status
/// code and the head text; leaves any body bytes in `extra`.
pub(crate) async fn read_head(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let extra = buf[pos + 4..].to_vec();
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return (code, head, extra);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        if n == 0 {
            return (0, String::from_utf8_lossy(&buf).to_string(), Vec::new());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read a whole response with a Content-Length body.
pub(crate) async fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let (code, head, mut body) = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    while body.len() < len {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "body cut short");
        body.extend_from_slice(&b[..n]);
    }
    (code, head, body)
}

/// Send `CONNECT target` and return the status and the stream.
pub(crate) async fn connect(proxy: SocketAddr, target: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (code, _, _) = read_head(&mut s).await;
    (code, s)
}

/// Read until EOF (bounded by 10 s): true when the peer closed.
pub(crate) async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

pub(crate) fn tls_client(
    roots: Arc<rustls::RootCertStore>,
    sni: bool,
) -> tokio_rustls::TlsConnector {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.enable_sni = sni;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}
