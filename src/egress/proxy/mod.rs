//! `bottle proxy`: the builtin egress sidecar, a strict allowlist forward
//! proxy on tokio + hyper 1.
//!
//! What it does, per request:
//! - `CONNECT host:port`: the target is parsed (no IP literal in any
//!   notation, no userinfo, no stray bytes), normalized with `host::normalize`
//!   and matched: blocklist first (pipelock semantics), then port 443 against
//!   the allowlist or port 22 against the ssh hosts (`host::Pattern`).
//!   The proxy resolves the name itself, refuses internal addresses unless the
//!   host is trusted, and connects to exactly the address it checked. On 443
//!   it reads the TLS ClientHello before relaying a byte and closes the tunnel
//!   unless its SNI names the CONNECT host.
//! - absolute-form `http://host[:80]/…`: the same checks on port 80, the Host
//!   header must name the URI's authority, and every request on a keep-alive
//!   connection is checked again. Ambiguous framing (Content-Length with
//!   Transfer-Encoding, repeated Content-Length) is answered 400 and the
//!   connection closed.
//! - anything else is refused.
//!
//! Every decision is one JSON line on the log sink (stdout in production); a
//! readiness line is written once listening. There is no admin, metrics or
//! DNS endpoint: the listening socket speaks only the proxy protocol.

mod framing;
mod relay;
pub mod sni;
pub mod target;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::EgressError;
use super::config::EgressConfig;
use crate::host::Pattern;
use target::{Refusal, forbidden_ip, parse_authority, pipelock_match};

type Body = BoxBody<Bytes, hyper::Error>;

/// Everything the proxy decides with, compiled from the config file plus the
/// few limits pipelock's format has no key for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub allow: Vec<Pattern>,
    pub ssh: Vec<Pattern>,
    /// Blocklist entries in pipelock's syntax (normalized).
    pub block: Vec<String>,
    pub trusted: Vec<Pattern>,
    pub sni_verification: bool,
    pub max_tunnel: Duration,
    pub idle_timeout: Duration,
    pub max_tunnels: usize,
    pub max_header_bytes: usize,
    pub connect_timeout: Duration,
    pub hello_timeout: Duration,
}

impl Settings {
    /// `ssh_hosts`: hosts reachable on port 22 (pipelock's format has no
    /// per-port allowlist, so the runner passes them on the command line).
    pub fn from_config(
        config: &EgressConfig,
        ssh_hosts: &[String],
    ) -> Result<Settings, EgressError> {
        let parse = |field: &str, h: &String| {
            Pattern::parse(h).map_err(|e| EgressError::Config {
                path: field.to_string(),
                msg: format!("`{h}` {e}"),
            })
        };
        let allow = config
            .api_allowlist
            .iter()
            .map(|h| parse("api_allowlist", h))
            .collect::<Result<Vec<_>, _>>()?;
        let ssh = ssh_hosts
            .iter()
            .map(|h| parse("--ssh-host", h))
            .collect::<Result<Vec<_>, _>>()?;
        let trusted = config
            .trusted_domains
            .iter()
            .map(|h| parse("trusted_domains", h))
            .collect::<Result<Vec<_>, _>>()?;
        let block = match &config.fetch_proxy {
            Some(fp) => fp
                .monitoring
                .blocklist
                .iter()
                .map(|h| parse("fetch_proxy.monitoring.blocklist", h).map(|p| p.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Settings {
            allow,
            ssh,
            block,
            trusted,
            sni_verification: config.forward_proxy.sni_verification,
            max_tunnel: Duration::from_secs(config.forward_proxy.max_tunnel_seconds),
            idle_timeout: Duration::from_secs(config.forward_proxy.idle_timeout_seconds),
            max_tunnels: 1024,
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
        })
    }
}

/// How target names become addresses.
#[derive(Debug, Clone)]
pub enum Resolver {
    /// The system resolver (getaddrinfo), as in the sidecar container.
    System,
    /// A fixed table; names not in it do not resolve. For tests, so they
    /// never depend on (or send traffic to) real DNS. An entry's port 0 means
    /// "the port asked for"; any other port redirects there (a test upstream
    /// on an ephemeral port stands in for port 443).
    Static(HashMap<String, Vec<SocketAddr>>),
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|it| it.collect())
                .map_err(|e| e.to_string()),
            Resolver::Static(map) => map
                .get(host)
                .map(|addrs| {
                    addrs
                        .iter()
                        .map(|a| match a.port() {
                            0 => SocketAddr::new(a.ip(), port),
                            _ => *a,
                        })
                        .collect()
                })
                .ok_or_else(|| "name does not resolve".to_string()),
        }
    }
}

/// Where decision lines go.
#[derive(Debug, Clone)]
pub enum LogSink {
    Stdout,
    Channel(tokio::sync::mpsc::UnboundedSender<serde_json::Value>),
}

/// One decision, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub time: String,
    pub event: &'static str,
    pub verdict: &'static str,
    pub reason: String,
    pub method: &'static str,
    pub host: String,
    pub port: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// The running proxy's shared state.
pub struct Proxy {
    settings: Settings,
    resolver: Resolver,
    log: LogSink,
    tunnels: Arc<Semaphore>,
}

impl Proxy {
    pub fn new(settings: Settings, resolver: Resolver, log: LogSink) -> Arc<Proxy> {
        let tunnels = Arc::new(Semaphore::new(settings.max_tunnels));
        Arc::new(Proxy {
            settings,
            resolver,
            log,
            tunnels,
        })
    }

    fn emit(&self, value: serde_json::Value) {
        match &self.log {
            LogSink::Stdout => {
                use std::io::Write as _;
                let mut line = value.to_string();
                line.push('\n');
                // A closed stdout must not take the proxy down; the decision
                // itself has already been enforced.
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            LogSink::Channel(tx) => {
                let _ = tx.send(value);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        verdict: &'static str,
        reason: impl Into<String>,
        method: &'static str,
        host: &str,
        port: u16,
        up: u64,
        down: u64,
        started: Instant,
    ) {
        let d = Decision {
            time: rfc3339_now(),
            event: "decision",
            verdict,
            reason: reason.into(),
            method,
            host: host.to_string(),
            port,
            bytes_up: up,
            bytes_down: down,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        self.emit(serde_json::to_value(d).unwrap_or_default());
    }

    /// Policy for a parsed target: blocklist, then per-port allowlists.
    fn check_policy(&self, host: &str, port: u16, connect: bool) -> Result<(), Refusal> {
        if self.settings.block.iter().any(|b| pipelock_match(host, b)) {
            return Err(Refusal::new("host is blocklisted"));
        }
        let allowed = self.settings.allow.iter().any(|p| p.matches(host));
        let ssh = self.settings.ssh.iter().any(|p| p.matches(host));
        match (port, connect) {
            (443, true) if allowed => Ok(()),
            (22, true) if ssh => Ok(()),
            (80, false) if allowed => Ok(()),
            _ if allowed || ssh => Err(Refusal::new(format!(
                "port {port} not allowed for this host"
            ))),
            _ => Err(Refusal::new("host not in allowlist")),
        }
    }

    /// Resolve and vet every address; connect to the first that answers.
    /// All addresses are vetted before any is tried, so a name that mixes a
    /// public and an internal answer is refused outright.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, (StatusCode, Refusal)> {
        let addrs = self.resolver.resolve(host, port).await.map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                Refusal::new(format!("resolution failed: {e}")),
            )
        })?;
        if addrs.is_empty() {
            return Err((
                StatusCode::BAD_GATEWAY,
                Refusal::new("name has no addresses"),
            ));
        }
        let trusted = self.settings.trusted.iter().any(|p| p.matches(host));
        if !trusted {
            for a in &addrs {
                if let Some(class) = forbidden_ip(a.ip()) {
                    return Err((
                        StatusCode::FORBIDDEN,
                        Refusal::new(format!("resolves to {class} {}", a.ip())),
                    ));
                }
            }
        }
        let mut last = String::from("no address");
        for a in addrs {
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connect timed out".into(),
            }
        }
        Err((
            StatusCode::BAD_GATEWAY,
            Refusal::new(format!("upstream connect failed: {last}")),
        ))
    }
}

fn text_response(status: StatusCode, msg: &str, close: bool) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Bind `listen`, print the readiness line, serve until SIGTERM or SIGINT.
pub async fn run(proxy: Arc<Proxy>, listen: &str) -> Result<(), EgressError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| EgressError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| EgressError::Listen {
            addr: "SIGTERM handler".into(),
            source,
        })?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(proxy, listener, shutdown).await
}

/// Serve on an already-bound listener until `shutdown` completes. Writes
/// `{"event":"ready","listen":ADDR,…}` first and `{"event":"shutdown"}` last.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EgressError> {
    let local = listener
        .local_addr()
        .map_err(|source| EgressError::Listen {
            addr: "listener".into(),
            source,
        })?;
    proxy.emit(serde_json::json!({
        "time": rfc3339_now(),
        "event": "ready",
        "listen": local.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
    }));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    // Out of descriptors or a reset handshake: keep serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(proxy.clone(), stream));
            }
        }
    }
    proxy.emit(serde_json::json!({"time": rfc3339_now(), "event": "shutdown"}));
    Ok(())
}

async fn serve_connection(proxy: Arc<Proxy>, stream: TcpStream) {
    let started = Instant::now();
    let p = proxy.clone();
    let ambiguous = Arc::new(AtomicBool::new(false));
    let flag = ambiguous.clone();
    let service = hyper::service::service_fn(move |req| {
        let p = p.clone();
        let flag = flag.clone();
        async move { Ok::<_, Infallible>(handle(p, req, &flag).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(proxy.settings.max_header_bytes.max(8192))
        .max_headers(100)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(framing::Watched::new(stream, ambiguous)),
            service,
        )
        .with_upgrades()
        .await;
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() || e.is_timeout() {
            proxy.decide(
                "deny",
                format!("malformed request: {e}"),
                "-",
                "",
                0,
                0,
                0,
                started,
            );
        }
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    ambiguous: &AtomicBool,
) -> Response<Body> {
    if ambiguous.load(Ordering::SeqCst) {
        // Whatever this request is, a head on this connection had ambiguous
        // framing: answer 400 and close before acting on anything.
        let started = Instant::now();
        let reason =
            "ambiguous framing: duplicate Content-Length or Content-Length with Transfer-Encoding";
        proxy.decide("deny", reason, "-", "", 0, 0, 0, started);
        return text_response(
            StatusCode::BAD_REQUEST,
            &format!("bottle proxy: {reason}"),
            true,
        );
    }
    if req.method() == Method::CONNECT {
        handle_connect(proxy, req).await
    } else {
        handle_http(proxy, req).await
    }
}

async fn handle_connect(proxy: Arc<Proxy>, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let deny = |status: StatusCode, host: &str, port: u16, reason: String| {
        proxy.decide("deny", reason.clone(), "CONNECT", host, port, 0, 0, started);
        text_response(status, &format!("bottle proxy: {reason}"), true)
    };
    if req.uri().scheme().is_some()
        || req
            .uri()
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return deny(
            StatusCode::BAD_REQUEST,
            &raw,
            0,
            "CONNECT target is not host:port".into(),
        );
    }
    let (host, port) = match parse_authority(&raw, None) {
        Ok(t) => t,
        Err(r) => return deny(StatusCode::FORBIDDEN, &raw, 0, r.reason),
    };
    if let Err(r) = proxy.check_policy(&host, port, true) {
        return deny(StatusCode::FORBIDDEN, &host, port, r.reason);
    }
    let permit = match proxy.tunnels.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            return deny(
                StatusCode::SERVICE_UNAVAILABLE,
                &host,
                port,
                "too many tunnels".into(),
            );
        }
    };
    let upstream = match proxy.connect(&host, port).await {
        Ok(s) => s,
        Err((status, r)) => return deny(status, &host, port, r.reason),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let p = proxy.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let client = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                p.decide(
                    "deny",
                    format!("upgrade failed: {e}"),
                    "CONNECT",
                    &host,
                    port,
                    0,
                    0,
                    started,
                );
                return;
            }
        };
        tunnel(p, client, upstream, host, port, started).await;
    });
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}

async fn tunnel(
    proxy: Arc<Proxy>,
    mut client: TokioIo<hyper::upgrade::Upgraded>,
    mut upstream: TcpStream,
    host: String,
    port: u16,
    started: Instant,
) {
    let mut up_prefix = 0u64;
    if port == 443 && proxy.settings.sni_verification {
        let hello = tokio::time::timeout(
            proxy.settings.hello_timeout,
            sni::read_client_hello(&mut client),
        )
        .await;
        let (raw, sni) = match hello {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                proxy.decide(
                    "deny",
                    format!("SNI check: {e}"),
                    "CONNECT",
                    &host,
                    port,
                    0,
                    0,
                    started,
                );
                return;
            }
            Err(_) => {
                proxy.decide(
                    "deny",
                    "SNI check: no ClientHello in time",
                    "CONNECT",
                    &host,
                    port,
                    0,
                    0,
                    started,
                );
                return;
            }
        };
        match sni.as_deref().map(crate::host::normalize) {
            None => {
                proxy.decide("deny", "SNI missing", "CONNECT", &host, port, 0, 0, started);
                return;
            }
            Some(Ok(name)) if name == host => {}
            Some(_) => {
                let shown = sni.unwrap_or_default();
                proxy.decide(
                    "deny",
                    format!("SNI mismatch: `{}`", shown.escape_debug()),
                    "CONNECT",
                    &host,
                    port,
                    0,
                    0,
                    started,
                );
                return;
            }
        }
        if upstream.write_all(&raw).await.is_err() {
            proxy.decide(
                "deny",
                "upstream closed",
                "CONNECT",
                &host,
                port,
                0,
                0,
                started,
            );
            return;
        }
        up_prefix = raw.len() as u64;
    }
    let outcome = relay::relay(
        client,
        upstream,
        proxy.settings.max_tunnel,
        proxy.settings.idle_timeout,
    )
    .await;
    proxy.decide(
        "allow",
        format!("tunnel closed: {}", outcome.end),
        "CONNECT",
        &host,
        port,
        outcome.up + up_prefix,
        outcome.down,
        started,
    );
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy ones: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    for h in named {
        headers.remove(h.as_str());
    }
}

async fn handle_http(proxy: Arc<Proxy>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    };
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let deny = |status: StatusCode, host: &str, port: u16, reason: String, close: bool| {
        proxy.decide("deny", reason.clone(), method, host, port, 0, 0, started);
        text_response(status, &format!("bottle proxy: {reason}"), close)
    };
    // Framing first: an ambiguous body length is a smuggling attempt whatever
    // the target, and the connection cannot be trusted afterwards.
    let cl = req.headers().get_all(header::CONTENT_LENGTH).iter().count();
    let te = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .count();
    if cl > 1 {
        return deny(
            StatusCode::BAD_REQUEST,
            &raw,
            0,
            "duplicate Content-Length".into(),
            true,
        );
    }
    if cl > 0 && te > 0 {
        return deny(
            StatusCode::BAD_REQUEST,
            &raw,
            0,
            "both Content-Length and Transfer-Encoding".into(),
            true,
        );
    }
    if req.method() == Method::TRACE {
        return deny(
            StatusCode::METHOD_NOT_ALLOWED,
            &raw,
            0,
            "TRACE refused".into(),
            false,
        );
    }
    match req.uri().scheme_str() {
        Some("http") => {}
        Some(_) => {
            return deny(
                StatusCode::BAD_REQUEST,
                &raw,
                0,
                "only http:// in absolute form; use CONNECT for https".into(),
                false,
            );
        }
        None => {
            return deny(
                StatusCode::BAD_REQUEST,
                &raw,
                0,
                "not a proxy request (origin-form); this endpoint serves nothing itself".into(),
                false,
            );
        }
    }
    let (host, port) = match parse_authority(&raw, Some(80)) {
        Ok(t) => t,
        Err(r) => return deny(StatusCode::FORBIDDEN, &raw, 0, r.reason, false),
    };
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let host_ok = match hosts.as_slice() {
        [one] => one
            .to_str()
            .ok()
            .and_then(|v| parse_authority(v, Some(80)).ok())
            .is_some_and(|(h, p)| h == host && p == port),
        _ => false,
    };
    if !host_ok {
        return deny(
            StatusCode::BAD_REQUEST,
            &host,
            port,
            "Host header does not match the request URI".into(),
            true,
        );
    }
    if let Err(r) = proxy.check_policy(&host, port, false) {
        return deny(StatusCode::FORBIDDEN, &host, port, r.reason, false);
    }
    let stream = match proxy.connect(&host, port).await {
        Ok(s) => s,
        Err((status, r)) => return deny(status, &host, port, r.reason, false),
    };
    let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => {
            return deny(
                StatusCode::BAD_GATEWAY,
                &host,
                port,
                format!("upstream: {e}"),
                false,
            );
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut sender = sender;
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => {
            return deny(
                StatusCode::BAD_REQUEST,
                &host,
                port,
                "bad request path".into(),
                false,
            );
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    let upstream_req = Request::from_parts(parts, body);
    match sender.send_request(upstream_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let down = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            proxy.decide(
                "allow",
                format!("forwarded, upstream status {}", parts.status.as_u16()),
                method,
                &host,
                port,
                0,
                down,
                started,
            );
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => deny(
            StatusCode::BAD_GATEWAY,
            &host,
            port,
            format!("upstream: {e}"),
            false,
        ),
    }
}

/// Current UTC time as RFC 3339 with milliseconds, without a date crate.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_199, 5), "2024-02-29T23:59:59.005Z");
        assert_eq!(rfc3339(1_798_761_600, 0), "2027-01-01T00:00:00.000Z");
    }
}
