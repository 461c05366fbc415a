//! Load generator and sink for `scripts/bench-proxy` (loopback only).
//!
//! `egress_bench sink ADDR CERT_OUT` serves on ADDR: a connection whose first
//! byte is 0x16 gets a TLS handshake (cert for `localhost`, written as DER to
//! CERT_OUT) and then an echo; `E` gets a plain echo; `D` plus an 8-byte
//! big-endian length is followed by that many bytes, discarded and answered
//! with the count.
//!
//! Clients print one JSON line. PROXY is `host:port` of an HTTP proxy or
//! `direct`; TARGET is what is sent in CONNECT (and dialled when direct).
//! - `throughput PROXY TARGET BYTES`
//! - `latency PROXY TARGET CERT CONCURRENCY SECONDS`: CONCURRENCY TLS
//!   tunnels, each doing 32-byte request/response round trips
//! - `setup PROXY TARGET CERT CONCURRENCY SECONDS`: each request is a new
//!   tunnel (CONNECT, TLS handshake, one round trip, close)
//! - `serial CERT SECONDS NAME=PROXY,TARGET…`: one new tunnel at a time (as
//!   `setup` with one worker), taking the routes in turn request by request
//!   so that load drift on a shared machine hits every route alike; one JSON
//!   line per route, with its NAME
//! - `idle PROXY TARGET CERT TUNNELS PID` (sums VmRSS over PID's process tree
//!   while TUNNELS TLS tunnels are open and idle)
//!
//! Every loop is bounded by a count or a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    match a(0).as_str() {
        "sink" => sink(&a(1), &a(2)).await,
        "throughput" => throughput(&a(1), &a(2), a(3).parse()?).await,
        "latency" => latency(&a(1), &a(2), &a(3), a(4).parse()?, a(5).parse()?).await,
        "setup" => setup(&a(1), &a(2), &a(3), a(4).parse()?, a(5).parse()?).await,
        "serial" => serial(&a(1), a(2).parse()?, &args[3.min(args.len())..]).await,
        "idle" => idle(&a(1), &a(2), &a(3), a(4).parse()?, a(5).parse()?).await,
        other => Err(format!("unknown command `{other}`").into()),
    }
}

async fn sink(addr: &str, cert_out: &str) -> Res<()> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    std::fs::write(cert_out, cert.der())?;
    let pk = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], pk)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            if s.peek(&mut first).await.unwrap_or(0) == 0 {
                return;
            }
            match first[0] {
                0x16 => {
                    if let Ok(tls) = acceptor.accept(s).await {
                        echo(tls).await;
                    }
                }
                b'E' => echo(s).await,
                b'D' => {
                    // `D`, an 8-byte big-endian length, then that many bytes;
                    // answered with the count. No half-close: squid ends a
                    // tunnel when either side shuts down its write half.
                    let mut head = [0u8; 9];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let want = u64::from_be_bytes(head[1..].try_into().unwrap_or([0; 8]));
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut n = 0u64;
                    while n < want {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k as u64,
                        }
                    }
                    let _ = s.write_all(&n.to_be_bytes()).await;
                }
                _ => {}
            }
        });
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A connection to TARGET, through PROXY's CONNECT unless PROXY is `direct`.
async fn open(proxy: &str, target: &str) -> Res<TcpStream> {
    if proxy == "direct" {
        let s = TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    }
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err("proxy closed during CONNECT".into());
        }
        head.push(b[0]);
        if head.len() > 8192 {
            return Err("CONNECT response too long".into());
        }
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("CONNECT refused: {}", status.lines().next().unwrap_or("")).into());
    }
    Ok(s)
}

async fn throughput(proxy: &str, target: &str, bytes: u64) -> Res<()> {
    let mut s = open(proxy, target).await?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    s.write_all(b"D").await?;
    s.write_all(&bytes.to_be_bytes()).await?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(n);
    if got != bytes {
        return Err(format!("sink counted {got} bytes, sent {bytes}").into());
    }
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "seconds": secs, "mib_per_s": bytes as f64 / 1048576.0 / secs})
    );
    Ok(())
}

fn tls_connector(cert: &str) -> Res<tokio_rustls::TlsConnector> {
    let der = std::fs::read(cert)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// One request: tunnel, TLS handshake, 32-byte echo, close.
async fn one_request(tls: &tokio_rustls::TlsConnector, proxy: &str, target: &str) -> Res<()> {
    let s = open(proxy, target).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut t = tls.connect(name, s).await?;
    let msg = [7u8; 32];
    t.write_all(&msg).await?;
    // tokio-rustls may keep a record buffered until flushed.
    t.flush().await?;
    let mut back = [0u8; 32];
    t.read_exact(&mut back).await?;
    if back != msg {
        return Err("echo differs".into());
    }
    Ok(())
}

async fn latency(proxy: &str, target: &str, cert: &str, conc: usize, secs: u64) -> Res<()> {
    let tls = tls_connector(cert)?;
    let mut tunnels = Vec::new();
    for _ in 0..conc {
        let s = open(proxy, target).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        tunnels.push(tls.connect(name, s).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut t in tunnels {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let msg = [7u8; 32];
            let mut back = [0u8; 32];
            while Instant::now() < deadline {
                let start = Instant::now();
                let rt = async {
                    t.write_all(&msg).await?;
                    t.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), rt).await {
                    Ok(Ok(())) => lat.push(start.elapsed().as_micros() as u64),
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    report(tasks, secs).await
}

async fn setup(proxy: &str, target: &str, cert: &str, conc: usize, secs: u64) -> Res<()> {
    let tls = tls_connector(cert)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (tls, proxy, target) = (tls.clone(), proxy.to_string(), target.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    one_request(&tls, &proxy, &target),
                )
                .await
                {
                    Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    report(tasks, secs).await
}

async fn serial(cert: &str, secs: u64, routes: &[String]) -> Res<()> {
    let tls = tls_connector(cert)?;
    let mut parsed = Vec::new();
    for r in routes {
        let (name, rest) = r.split_once('=').ok_or("route is NAME=PROXY,TARGET")?;
        let (proxy, target) = rest.split_once(',').ok_or("route is NAME=PROXY,TARGET")?;
        parsed.push((name, proxy, target, Vec::<u64>::new(), 0u64));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        for (_, proxy, target, lat, errors) in parsed.iter_mut() {
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(2), one_request(&tls, proxy, target));
            match r.await {
                Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                _ => *errors += 1,
            }
        }
    }
    for (name, _, _, mut lat, errors) in parsed {
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{}",
            serde_json::json!({
                "name": name, "requests": lat.len(), "errors": errors,
                "p50_us": pct(0.50), "p99_us": pct(0.99),
            })
        );
    }
    Ok(())
}

async fn report(tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64)>>, secs: u64) -> Res<()> {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(), "errors": errors,
            "rps": all.len() as f64 / secs as f64,
            "p50_us": pct(0.50), "p99_us": pct(0.99),
        })
    );
    Ok(())
}

/// VmRSS (KiB) summed over `pid` and its descendants.
fn tree_rss(pid: u32) -> u64 {
    let mut parents = std::collections::HashMap::<u32, u32>::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rsplit(')').next() {
                    if let Some(pp) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
                        parents.insert(p, pp);
                    }
                }
            }
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..64 {
            if p == pid {
                return true;
            }
            match parents.get(&p) {
                Some(&pp) if pp != 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parents
        .keys()
        .filter(|&&p| in_tree(p))
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
                })
                .unwrap_or(0u64)
        })
        .sum()
}

async fn idle(proxy: &str, target: &str, cert: &str, n: usize, pid: u32) -> Res<()> {
    let tls = tls_connector(cert)?;
    let before = tree_rss(pid);
    let mut open_tunnels = Vec::with_capacity(n);
    for _ in 0..n {
        let s = open(proxy, target).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let mut t = tls.connect(name, s).await?;
        t.write_all(b"x").await?;
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await?;
        open_tunnels.push(t);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = tree_rss(pid);
    println!(
        "{}",
        serde_json::json!({"tunnels": open_tunnels.len(), "rss_kib_before": before, "rss_kib": during})
    );
    drop(open_tunnels);
    Ok(())
}
