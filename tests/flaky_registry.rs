//! Transient registry errors are retried: a proxy of the test's own in front
//! of the test registry fails every Nth request (500, 503, or a connection
//! reset), and `lock` and `push` still succeed through it; when every
//! request fails, they end with exit 3 naming the attempts made.

mod common;
mod lock_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lock_support::{Project, Variation};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status(u16),
    /// Close the connection with a TCP RST instead of answering.
    Reset,
}

/// A forwarding HTTP proxy on 127.0.0.1 in front of `upstream` that answers
/// every `every`-th request with `fault` itself (1: every request). Counts
/// requests and faults; stops when dropped.
struct FlakyProxy {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    faults: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl FlakyProxy {
    fn start(upstream: u16, every: usize, fault: Fault) -> FlakyProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let (req_n, fault_n) = (requests.clone(), faults.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                let (client, req_n, fault_n) = (client.clone(), req_n.clone(), fault_n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = req_n.fetch_add(1, Ordering::SeqCst) + 1;
                        let client = client.clone();
                        let fault_n = fault_n.clone();
                        async move {
                            if n % every == 0 {
                                fault_n.fetch_add(1, Ordering::SeqCst);
                                return inject(fault, fd);
                            }
                            forward(&client, upstream, req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FlakyProxy {
            addr,
            requests,
            faults,
            _runtime: runtime,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

fn inject(fault: Fault, fd: i32) -> Result<Response<Body>, String> {
    match fault {
        Fault::Status(code) => Ok(Response::builder()
            .status(code)
            .body(
                Full::new(Bytes::from_static(b"injected fault"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()),
        Fault::Reset => {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: `fd` is the connection's socket, open while its
            // service runs; SO_LINGER 0 makes the close below send a RST.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // An error makes hyper drop the connection without an answer.
            Err("injected reset".into())
        }
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: u16,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, String> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    // The Host header stays the proxy's, so the registry's upload
    // locations point back through the proxy.
    *req.uri_mut() = format!("http://127.0.0.1:{upstream}{path}")
        .parse()
        .unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.map(BodyExt::boxed))
}

/// Is `repo@digest` in the registry (asked directly, not through a proxy)?
fn manifest_there(reg: &common::Registry, repo: &str, digest: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bottle::registry::manifest_exists(&reg.host(), repo, digest))
        .unwrap()
}

#[test]
fn lock_and_push_succeed_through_a_registry_failing_every_third_request() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    for fault in [Fault::Status(500), Fault::Status(503), Fault::Reset] {
        let proxy = FlakyProxy::start(reg.port, 3, fault);
        let p = Project::new(&["hello"], Variation::default());
        // A fresh cache and a changed prompt: lock builds and uploads all.
        p.write("agents/hello/prompt.md", format!("flaky {fault:?}\n"));
        let out = p.bottle(&["lock", "hello"], Some(&proxy.host()), &[]);
        assert_eq!(out.code, 0, "{fault:?}: {out:?}");
        let digest = lock_support::digest_of(&out);
        assert!(
            proxy.faults.load(Ordering::SeqCst) > 0,
            "{fault:?}: no fault was injected"
        );
        // What the lock pushed is really there (asked around the proxy).
        assert!(manifest_there(&reg, "bottle/hello", &digest), "{fault:?}");

        // push: fetch from and copy to the registry through the proxy.
        let faults_before = proxy.faults.load(Ordering::SeqCst);
        let to = format!("{}/team/flaky", proxy.host());
        let out = p.bottle(&["push", "hello", "--to", &to], Some(&proxy.host()), &[]);
        assert_eq!(out.code, 0, "{fault:?}: {out:?}");
        assert!(proxy.faults.load(Ordering::SeqCst) > faults_before);
        assert!(manifest_there(&reg, "team/flaky", &digest), "{fault:?}");
    }
}

#[test]
fn a_registry_failing_every_request_ends_with_exit_3_naming_the_attempts() {
    if !common::require_busybox() {
        return;
    }
    let Some(reg) = common::Registry::start() else {
        return;
    };
    for fault in [Fault::Status(503), Fault::Reset] {
        let proxy = FlakyProxy::start(reg.port, 1, fault);
        let p = Project::new(&["hello"], Variation::default());
        p.write("agents/hello/prompt.md", "never pushed\n");
        let before = p.read("lockfiles/hello.lock.json");
        let out = p.bottle(&["lock", "hello"], Some(&proxy.host()), &[]);
        assert_eq!(out.code, 3, "{fault:?}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("registry {} failed to ", proxy.host()))
                && out.stderr.contains(" after 4 attempts"),
            "{fault:?}: {}",
            out.stderr
        );
        assert_eq!(
            p.read("lockfiles/hello.lock.json"),
            before,
            "a failed lock wrote the lockfile"
        );
        // Each request was tried 4 times, and no more.
        assert_eq!(proxy.requests.load(Ordering::SeqCst) % 4, 0, "{fault:?}");

        let to = format!("{}/team/never", proxy.host());
        let src = format!("{}/bottle/hello@sha256:{}", proxy.host(), "b".repeat(64));
        let out = p.bottle(&["push", &src, "--to", &to], Some(&proxy.host()), &[]);
        assert_eq!(out.code, 3, "{fault:?}: {out:?}");
        assert!(out.stderr.contains(" after 4 attempts"), "{}", out.stderr);
    }
}
