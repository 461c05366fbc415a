//! The builtin proxy end to end on loopback: allowed traffic passes intact,
//! every refusal class is refused with its reason in the decision log.
//! Upstreams are the test's own listeners on 127.0.0.1, reached only through
//! a static resolver the test controls (and marked trusted where they must
//! be reached); nothing leaves the machine.

mod egress_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bottle::egress::config::RunOptions;
use egress_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct World {
    proxy: Running,
    roots: std::sync::Arc<rustls::RootCertStore>,
}

async fn world_with(tweak: impl FnOnce(&mut bottle::egress::proxy::Settings)) -> World {
    let pki = pki(&["allowed.test", "other.test", "api.example.com"]);
    let tls = tls_echo(pki.server.clone()).await;
    let echo = tcp_echo().await;
    let http = http_upstream().await;
    let lo = |a: SocketAddr| vec![a];
    let mut map: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    map.insert("allowed.test".into(), lo(tls));
    map.insert("api.example.com".into(), lo(tls));
    map.insert("web.example.com".into(), lo(http));
    map.insert("ssh.test".into(), lo(echo));
    // Allowed names whose addresses are internal and NOT trusted.
    map.insert(
        "loop.example.com".into(),
        vec!["127.0.0.1:0".parse().unwrap()],
    );
    map.insert(
        "private.example.com".into(),
        vec!["10.0.0.7:0".parse().unwrap()],
    );
    map.insert(
        "linklocal.example.com".into(),
        vec!["169.254.10.10:0".parse().unwrap()],
    );
    map.insert(
        "metadata.example.com".into(),
        vec!["169.254.169.254:0".parse().unwrap()],
    );
    map.insert(
        "ula.example.com".into(),
        vec!["[fd00::1]:0".parse().unwrap()],
    );
    map.insert(
        "mapped.example.com".into(),
        vec!["[::ffff:127.0.0.1]:0".parse().unwrap()],
    );
    map.insert(
        "mixed.example.com".into(),
        vec!["10.0.0.8:0".parse().unwrap(), tls],
    );
    let p = policy(&["*.example.com", "allowed.test"], &["ssh.test"]);
    let opts = RunOptions {
        trusted: vec![
            "allowed.test".into(),
            "api.example.com".into(),
            "web.example.com".into(),
            "ssh.test".into(),
        ],
        ..RunOptions::default()
    };
    World {
        proxy: start(&p, &opts, map, tweak).await,
        roots: pki.roots,
    }
}

async fn world() -> World {
    world_with(|_| {}).await
}

async fn expect_denied(w: &mut World, target: &str, status: u16, reason: &str) {
    let (code, _) = connect(w.proxy.addr, target).await;
    assert_eq!(code, status, "CONNECT {target:?}");
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "deny", "{target:?}: {d}");
    let got = d["reason"].as_str().unwrap();
    assert!(
        got.contains(reason),
        "{target:?}: reason {got:?} lacks {reason:?}"
    );
}

#[tokio::test]
async fn allowed_connect_tunnel_carries_tls_bytes_intact() {
    let mut w = world().await;
    let (code, stream) = connect(w.proxy.addr, "allowed.test:443").await;
    assert_eq!(code, 200);
    let tls = tls_client(w.roots.clone(), true);
    let name = rustls::pki_types::ServerName::try_from("allowed.test").unwrap();
    let mut s = tls
        .connect(name, stream)
        .await
        .expect("TLS through the tunnel");
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut r, mut wr) = tokio::io::split(&mut s);
    let send = async {
        wr.write_all(&payload).await.unwrap();
        wr.flush().await.unwrap();
    };
    let mut back = vec![0u8; payload.len()];
    let recv = r.read_exact(&mut back);
    let (_, got) = tokio::join!(send, recv);
    got.unwrap();
    assert!(back == payload, "echoed bytes differ");
    s.shutdown().await.unwrap();
    drop(s);
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "allow", "{d}");
    assert_eq!(d["host"], "allowed.test");
    assert_eq!(d["port"], 443);
    assert!(d["bytes_up"].as_u64().unwrap() > 1_048_576, "{d}");
    assert!(d["bytes_down"].as_u64().unwrap() > 1_048_576, "{d}");
    for k in ["time", "reason", "duration_ms"] {
        assert!(d.get(k).is_some(), "log line lacks {k}: {d}");
    }
}

#[tokio::test]
async fn wildcard_subdomain_and_ssh_port_are_allowed() {
    let mut w = world().await;
    let (code, stream) = connect(w.proxy.addr, "API.Example.COM.:443").await;
    assert_eq!(code, 200);
    let tls = tls_client(w.roots.clone(), true);
    let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
    let mut s = tls.connect(name, stream).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    drop(s);
    assert_eq!(w.proxy.decision().await["verdict"], "allow");

    // Port 22 for an ssh host: not TLS, so no SNI check, bytes relayed as is.
    let (code, mut s) = connect(w.proxy.addr, "ssh.test:22").await;
    assert_eq!(code, 200);
    s.write_all(b"SSH-2.0-test\r\n").await.unwrap();
    let mut b = [0u8; 14];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"SSH-2.0-test\r\n");
    drop(s);
    let d = w.proxy.decision().await;
    assert_eq!(
        (d["verdict"].as_str(), d["port"].as_u64()),
        (Some("allow"), Some(22))
    );
}

#[tokio::test]
async fn absolute_form_http_is_forwarded_with_host_intact() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/p?q=1 HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 5\r\nProxy-Authorization: x\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (code, head, mut body) = read_head(&mut s).await;
    assert_eq!(code, 200, "{head}");
    let want = b"host=web.example.com;path=/p?q=1;body=5";
    while body.len() < want.len() {
        let mut b = [0u8; 256];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&b[..n]);
    }
    assert_eq!(&body[..], want);
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "allow", "{d}");
    assert_eq!(d["port"], 80);
}

#[tokio::test]
async fn refuses_hosts_outside_the_allowlist_and_lookalikes() {
    let mut w = world().await;
    for target in [
        "not-listed.test:443",
        "evilexample.com:443",
        "example.com.evil.test:443",
        "allowed.test.evil.test:443",
        "xn--exmple-cua.com:443",
        "api.example.com.evil.test:443",
        "allowed.tes:443",
    ] {
        expect_denied(&mut w, target, 403, "not in allowlist").await;
    }
    // The apex of a wildcard: blocklisted in the generated config (pipelock's
    // `*.example.com` would match it; ours must not).
    expect_denied(&mut w, "example.com:443", 403, "blocklisted").await;
    expect_denied(&mut w, "EXAMPLE.com.:443", 403, "blocklisted").await;
    expect_denied(&mut w, "user@allowed.test:443", 403, "userinfo").await;
    // hyper refuses a percent sign in an authority before the proxy sees it.
    expect_denied(&mut w, "allowed%2etest:443", 400, "malformed").await;
    expect_denied(&mut w, "allowed.test..:443", 403, "invalid host").await;
    expect_denied(&mut w, "allowed.test", 403, "no port").await;
}

#[tokio::test]
async fn refuses_ip_literals_in_every_notation() {
    let mut w = world().await;
    for target in [
        "127.0.0.1:443",
        "2130706433:443",
        "0x7f000001:443",
        "0177.0.0.1:443",
        "0x7f.0.0.1:443",
        "127.1:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "[fe80::1%25eth0]:443",
        "169.254.169.254:443",
        "203.0.113.8:443",
    ] {
        expect_denied(&mut w, target, 403, "IP literal").await;
    }
}

#[tokio::test]
async fn refuses_allowed_host_on_wrong_port() {
    let mut w = world().await;
    for target in [
        "allowed.test:8443",
        "allowed.test:80",
        "allowed.test:22",
        "ssh.test:8443",
        "ssh.test:2222",
    ] {
        expect_denied(&mut w, target, 403, "not allowed for this host").await;
    }
    // Absolute-form to an allowed host on a port other than 80.
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://web.example.com:8080/ HTTP/1.1\r\nHost: web.example.com:8080\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 403);
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("port 8080"), "{d}");
}

#[tokio::test]
async fn refuses_names_resolving_to_internal_addresses() {
    let mut w = world().await;
    for (target, class) in [
        ("loop.example.com:443", "loopback"),
        ("private.example.com:443", "private"),
        ("linklocal.example.com:443", "link-local"),
        ("metadata.example.com:443", "metadata"),
        ("ula.example.com:443", "unique local"),
        ("mapped.example.com:443", "IPv4-mapped"),
        ("mixed.example.com:443", "private"),
    ] {
        expect_denied(&mut w, target, 403, class).await;
    }
}

#[tokio::test]
async fn sni_mismatch_or_missing_closes_the_tunnel() {
    let mut w = world().await;
    // SNI names another host (one the upstream even has a cert for).
    let (code, stream) = connect(w.proxy.addr, "allowed.test:443").await;
    assert_eq!(code, 200);
    let tls = tls_client(w.roots.clone(), true);
    let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
    assert!(tls.connect(other, stream).await.is_err());
    let d = w.proxy.decision().await;
    assert_eq!(d["verdict"], "deny");
    assert!(
        d["reason"].as_str().unwrap().contains("SNI mismatch"),
        "{d}"
    );

    // No SNI at all.
    let (code, stream) = connect(w.proxy.addr, "allowed.test:443").await;
    assert_eq!(code, 200);
    let tls = tls_client(w.roots.clone(), false);
    let name = rustls::pki_types::ServerName::try_from("allowed.test").unwrap();
    assert!(tls.connect(name, stream).await.is_err());
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("SNI missing"), "{d}");

    // Not TLS at all on 443.
    let (code, mut s) = connect(w.proxy.addr, "allowed.test:443").await;
    assert_eq!(code, 200);
    s.write_all(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(&mut s).await);
    let d = w.proxy.decision().await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("not a TLS handshake"),
        "{d}"
    );
}

#[tokio::test]
async fn host_header_must_match_on_every_keepalive_request() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://web.example.com/a HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 400);
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("Host header"), "{d}");
    assert!(
        closed(&mut s).await,
        "connection closed after a Host mismatch"
    );

    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://web.example.com/a HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (code, head, body) = read_response(&mut s).await;
    assert_eq!(code, 200, "{head}");
    assert!(body.starts_with(b"host=web.example.com;"));
    assert_eq!(w.proxy.decision().await["verdict"], "allow");
    // Same connection, second request with another Host.
    s.write_all(b"GET http://web.example.com/b HTTP/1.1\r\nHost: evil.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 400);
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("Host header"), "{d}");
}

#[tokio::test]
async fn keepalive_request_to_another_host_is_checked_again() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://web.example.com/a HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (code, head, body) = read_response(&mut s).await;
    assert_eq!(code, 200, "{head}");
    assert!(body.starts_with(b"host=web.example.com;"));
    assert_eq!(w.proxy.decision().await["verdict"], "allow");
    s.write_all(b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 403);
    let d = w.proxy.decision().await;
    assert_eq!(d["host"], "evil.test");
    assert!(
        d["reason"].as_str().unwrap().contains("not in allowlist"),
        "{d}"
    );
}

#[tokio::test]
async fn smuggling_framing_is_rejected_and_connection_closed() {
    let mut w = world().await;
    for req in [
        &b"POST http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        &b"POST http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"[..],
        &b"POST http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"[..],
    ] {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let (code, head, _) = read_head(&mut s).await;
        assert!(code == 400 || code == 0, "{head}");
        assert!(closed(&mut s).await, "connection must close after {head}");
        let d = w.proxy.decision().await;
        assert_eq!(d["verdict"], "deny");
        let reason = d["reason"].as_str().unwrap();
        assert!(
            reason.contains("Content-Length") || reason.contains("malformed"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn other_request_shapes_are_refused() {
    let mut w = world().await;
    for (req, code, reason) in [
        (
            &b"GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n"[..],
            400,
            "origin-form",
        ),
        (
            &b"GET https://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n\r\n"[..],
            400,
            "use CONNECT",
        ),
        (
            &b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
            403,
            "IP literal",
        ),
        (
            &b"GET http://user@web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n\r\n"[..],
            403,
            "userinfo",
        ),
        (
            &b"TRACE http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n\r\n"[..],
            405,
            "TRACE",
        ),
    ] {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let (got, head, _) = read_head(&mut s).await;
        assert_eq!(got, code, "{head}");
        let d = w.proxy.decision().await;
        assert!(d["reason"].as_str().unwrap().contains(reason), "{d}");
    }
    // A space inside the CONNECT authority is a malformed request line.
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"CONNECT allowed.test :443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (code, _, _) = read_head(&mut s).await;
    assert!(code == 400 || code == 0);
    assert_eq!(w.proxy.decision().await["verdict"], "deny");
}

#[tokio::test]
async fn oversize_headers_are_refused() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let req = format!(
        "GET http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\nX-Big: {big}\r\n\r\n"
    );
    let _ = s.write_all(req.as_bytes()).await;
    let (code, head, _) = read_head(&mut s).await;
    assert!(code == 431 || code == 0, "{head}");
    assert!(closed(&mut s).await);
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("malformed"), "{d}");
}

#[tokio::test]
async fn tunnel_limits_apply() {
    let mut w = world_with(|s| {
        s.max_tunnels = 1;
        s.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let (code, mut first) = connect(w.proxy.addr, "ssh.test:22").await;
    assert_eq!(code, 200);
    // The one tunnel slot is taken.
    expect_denied(&mut w, "ssh.test:22", 503, "too many tunnels").await;
    // Idle: the first tunnel is closed after 300 ms without traffic.
    assert!(closed(&mut first).await);
    let d = w.proxy.decision().await;
    assert!(
        d["reason"].as_str().unwrap().contains("idle timeout"),
        "{d}"
    );
    // The slot is free again.
    let (code, _s) = connect(w.proxy.addr, "ssh.test:22").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn tunnel_lifetime_is_capped() {
    let mut w = world_with(|s| s.max_tunnel = Duration::from_millis(400)).await;
    let (code, mut s) = connect(w.proxy.addr, "ssh.test:22").await;
    assert_eq!(code, 200);
    let started = std::time::Instant::now();
    // Keep it busy so only the lifetime cap can end it.
    let mut buf = [0u8; 4];
    loop {
        if s.write_all(b"ping").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => panic!("tunnel hung"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let d = w.proxy.decision().await;
    assert!(d["reason"].as_str().unwrap().contains("lifetime"), "{d}");
}

#[tokio::test]
async fn large_and_chunked_bodies_pass_on_keepalive() {
    let mut w = world().await;
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    // 1 MiB with Content-Length, then a chunked body on the same connection:
    // the framing watch must follow both without a false alarm.
    let body = vec![b'x'; 1 << 20];
    let head = format!(
        "POST http://web.example.com/big HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut r, mut wr) = s.split();
    let send = async {
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(&body).await.unwrap();
    };
    let mut got = Vec::new();
    let recv = async {
        let mut b = [0u8; 4096];
        while !got.windows(12).any(|x| x == b"body=1048576") {
            let n = r.read(&mut b).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
    };
    tokio::join!(send, recv);
    assert_eq!(w.proxy.decision().await["verdict"], "allow");
    s.write_all(
        b"POST http://web.example.com/chunked HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nhello\r\n1b\r\nContent-Length: 5\r\nX: y\r\n\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (code, head, body) = read_response(&mut s).await;
    assert_eq!(code, 200, "{head}");
    assert_eq!(body, b"host=web.example.com;path=/chunked;body=32");
    assert_eq!(w.proxy.decision().await["verdict"], "allow");
}

#[tokio::test]
async fn transfer_encoding_other_than_one_chunked_is_rejected_and_connection_closed() {
    let mut w = world().await;
    for te in [
        "Transfer-Encoding: chunked\t",
        "Transfer-Encoding: chunked ",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding : chunked",
    ] {
        let req = format!(
            "POST http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (code, head, _) = read_head(&mut s).await;
        assert!(code == 400 || code == 0, "{te:?}: {head}");
        assert!(closed(&mut s).await, "{te:?}: connection must close");
        let d = w.proxy.decision().await;
        assert_eq!(d["verdict"], "deny", "{te:?}: {d}");
        let reason = d["reason"].as_str().unwrap();
        assert!(
            reason.contains("exactly one `chunked`") || reason.contains("malformed"),
            "{te:?}: {reason}"
        );
    }
    // The one accepted form still passes.
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (code, head, body) = read_response(&mut s).await;
    assert_eq!(code, 200, "{head}");
    assert!(body.ends_with(b"body=5"), "{body:?}");
    assert_eq!(w.proxy.decision().await["verdict"], "allow");
}

/// A world whose every lookup takes 300 ms (a slow zone behind a wildcard
/// entry), with upstreams that answer, refuse and stay mute.
async fn slow_world() -> World {
    let pki = pki(&["tls.example.com"]);
    let tls = tls_echo(pki.server.clone()).await;
    let http = http_upstream().await;
    let mute = mute_upstream().await;
    let dead = closed_port().await;
    let mut map: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    map.insert("tls.example.com".into(), vec![tls]);
    map.insert("slow.example.com".into(), vec![http]);
    map.insert("mute.example.com".into(), vec![mute]);
    map.insert("dead.example.com".into(), vec![dead]);
    let names = ["tls", "slow", "mute", "dead"];
    let opts = RunOptions {
        trusted: names.iter().map(|n| format!("{n}.example.com")).collect(),
        ..RunOptions::default()
    };
    let p = policy(&["*.example.com"], &[]);
    let resolver = bottle::egress::proxy::Resolver::Delayed(Duration::from_millis(300), map);
    let proxy = start_with(&p, &opts, resolver, |s| {
        s.idle_timeout = Duration::from_millis(1500);
        s.hello_timeout = Duration::from_millis(300);
    })
    .await;
    World {
        proxy,
        roots: pki.roots,
    }
}

/// The next decision line is about `host`, and it is the only one: a
/// sentinel request sent afterwards is the next line.
async fn one_line(w: &mut World, host: &str) -> serde_json::Value {
    let d = w.proxy.decision().await;
    assert_eq!(d["host"], host, "{d}");
    let (code, _) = connect(w.proxy.addr, "sentinel.invalid:443").await;
    assert_eq!(code, 403);
    let next = w.proxy.decision().await;
    assert_eq!(
        next["host"], "sentinel.invalid",
        "a second line for {host}: {next}"
    );
    d
}

fn reason(d: &serde_json::Value) -> &str {
    d["reason"].as_str().unwrap()
}

#[tokio::test]
async fn requests_aborted_after_sending_get_one_decision_line() {
    let mut w = slow_world().await;
    let http = b"GET http://slow.example.com/ HTTP/1.1\r\nHost: slow.example.com\r\n\r\n";
    let tunnel = b"CONNECT tls.example.com:443 HTTP/1.1\r\nHost: tls.example.com:443\r\n\r\n";
    // `printf … | nc -w1`: the request, then the client closes while the
    // proxy is still resolving the name.
    for (req, host, port) in [
        (&http[..], "slow.example.com", 80),
        (&tunnel[..], "tls.example.com", 443),
    ] {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        let d = one_line(&mut w, host).await;
        assert_eq!(d["port"], port, "{d}");
        assert_eq!(d["verdict"], "deny", "{d}");
        assert!(reason(&d).contains("client went away"), "{d}");
        assert!(reason(&d).contains("nothing forwarded"), "{d}");
    }
    // Half-closed (write side shut, as `nc -N` does): still exactly one line.
    for (req, host) in [
        (&http[..], "slow.example.com"),
        (&tunnel[..], "tls.example.com"),
    ] {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let d = one_line(&mut w, host).await;
        assert!(!reason(&d).is_empty(), "{d}");
    }
    // The client leaves while the upstream has not answered yet.
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://mute.example.com/ HTTP/1.1\r\nHost: mute.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(s);
    let d = one_line(&mut w, "mute.example.com").await;
    assert!(reason(&d).contains("client went away"), "{d}");
    // The tunnel is answered 200 and the client leaves before its hello.
    let (code, s) = connect(w.proxy.addr, "tls.example.com:443").await;
    assert_eq!(code, 200);
    drop(s);
    let d = one_line(&mut w, "tls.example.com").await;
    assert_eq!(d["verdict"], "deny", "{d}");
    assert!(reason(&d).contains("ClientHello"), "{d}");
}

#[tokio::test]
async fn failed_and_timed_out_requests_get_one_decision_line() {
    let mut w = slow_world().await;
    for (target, code, why) in [
        ("gone.example.com:443", 502, "resolution failed"),
        ("dead.example.com:443", 502, "upstream connect failed"),
    ] {
        let (got, _) = connect(w.proxy.addr, target).await;
        assert_eq!(got, code, "{target}");
        let host = target.split(':').next().unwrap();
        let d = one_line(&mut w, host).await;
        assert!(reason(&d).contains(why), "{d}");
    }
    for (host, code, why) in [
        ("gone.example.com", 502, "resolution failed"),
        ("dead.example.com", 502, "upstream connect failed"),
        ("mute.example.com", 504, "did not answer"),
    ] {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_head(&mut s).await.0, code, "{host}");
        let d = one_line(&mut w, host).await;
        assert!(reason(&d).contains(why), "{d}");
    }
    // What a wildcard entry lets an agent make the sidecar look up is a
    // hostname: a label over 63 bytes or a name over 253 is refused unresolved.
    let long_label = format!("{}.example.com:443", "a".repeat(64));
    let long_name = format!("{}.example.com:443", vec!["a".repeat(63); 4].join("."));
    for target in [&long_label, &long_name] {
        let (got, _) = connect(w.proxy.addr, target).await;
        assert_eq!(got, 403, "{target}");
        let d = one_line(&mut w, target).await;
        assert!(reason(&d).contains("invalid host"), "{d}");
    }
    // A tunnel whose client never sends its ClientHello.
    let (code, _s) = connect(w.proxy.addr, "tls.example.com:443").await;
    assert_eq!(code, 200);
    let d = one_line(&mut w, "tls.example.com").await;
    assert!(reason(&d).contains("no ClientHello in time"), "{d}");
    // And a whole TLS exchange through the slow world still works.
    let (code, stream) = connect(w.proxy.addr, "tls.example.com:443").await;
    assert_eq!(code, 200);
    let name = rustls::pki_types::ServerName::try_from("tls.example.com").unwrap();
    let mut s = tls_client(w.roots.clone(), true)
        .connect(name, stream)
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let d = one_line(&mut w, "tls.example.com").await;
    assert_eq!(d["verdict"], "allow", "{d}");
}
