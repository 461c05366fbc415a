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

mod connect;
mod dns_cache;
mod forward;
mod framing;
pub mod input;
pub mod intercept;
pub mod names;
mod pending;
mod relay;
mod route;
pub mod scan;
pub mod secrets;
pub mod sni;
pub mod target;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::EgressError;
use super::config::EgressConfig;
use crate::host::Pattern;
use target::{Refusal, forbidden_ip, pipelock_match};

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
    /// How long a successful lookup is reused (zero: never).
    pub dns_cache_ttl: Duration,
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
            dns_cache_ttl: Duration::from_secs(10),
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
    /// As `Static`, every lookup taking this long: stands in for a slow
    /// authoritative server, so tests can cut a request mid-resolution.
    Delayed(Duration, HashMap<String, Vec<SocketAddr>>),
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|it| it.collect())
                .map_err(|e| e.to_string()),
            Resolver::Static(map) => Self::table(map, host, port),
            Resolver::Delayed(delay, map) => {
                tokio::time::sleep(*delay).await;
                Self::table(map, host, port)
            }
        }
    }

    fn table(
        map: &HashMap<String, Vec<SocketAddr>>,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, String> {
        map.get(host)
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|a| match a.port() {
                        0 => SocketAddr::new(a.ip(), port),
                        _ => *a,
                    })
                    .collect()
            })
            .ok_or_else(|| "name does not resolve".to_string())
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
    /// The secrets `bottle run` sent over stdin (none: no injection, no
    /// interception, no secret scanning; names are still checked).
    vault: Option<Arc<secrets::Vault>>,
    leaves: intercept::Leaves,
    dns: dns_cache::DnsCache,
}

impl Proxy {
    pub fn new(settings: Settings, resolver: Resolver, log: LogSink) -> Arc<Proxy> {
        Proxy::with_vault(settings, resolver, log, None)
    }

    /// As [`Proxy::new`], holding `vault`'s secrets.
    pub fn with_vault(
        settings: Settings,
        resolver: Resolver,
        log: LogSink,
        vault: Option<secrets::Vault>,
    ) -> Arc<Proxy> {
        let tunnels = Arc::new(Semaphore::new(settings.max_tunnels));
        let dns = dns_cache::DnsCache::new(settings.dns_cache_ttl, 1024);
        Arc::new(Proxy {
            settings,
            resolver,
            log,
            tunnels,
            vault: vault.map(Arc::new),
            leaves: intercept::Leaves::default(),
            dns,
        })
    }

    /// A decision line never carries a secret: a host or reason holding one
    /// (an agent-chosen name, an SNI) is replaced by a marker.
    fn redact(&self, host: &str, reason: String) -> (String, String) {
        let Some(v) = &self.vault else {
            return (host.to_string(), reason);
        };
        let joined = host.replace('.', "");
        let host = if v.scanner.find_host(host).is_some() || v.scanner.find_host(&joined).is_some()
        {
            "[redacted: name carries a secret]".to_string()
        } else {
            host.to_string()
        };
        let reason = if v.scanner.find_text(reason.as_bytes()).is_some()
            || v.scanner.find_host(&reason).is_some()
        {
            "[redacted: reason quoted a secret]".to_string()
        } else {
            reason
        };
        (host, reason)
    }

    /// Checks on a target name before any lookup: a secret in it, or data
    /// under a wildcard entry.
    fn check_name(&self, host: &str) -> Result<(), Refusal> {
        if let Some(v) = &self.vault {
            // Dots removed too: a value split over labels is still the value.
            let joined = host.replace('.', "");
            if let Some(what) = v
                .scanner
                .find_host(host)
                .or_else(|| v.scanner.find_host(&joined))
            {
                return Err(Refusal::new(format!("dlp: {what}")));
            }
        }
        match names::suspicious(host, &self.settings.allow) {
            Some(why) => Err(Refusal::new(why)),
            None => Ok(()),
        }
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
        let (host, reason) = self.redact(host, reason.into());
        let d = Decision {
            time: rfc3339_now(),
            event: "decision",
            verdict,
            reason,
            method,
            host,
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

    /// A fresh cached answer, or the resolver's (bounded in time).
    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Some(addrs) = self.dns.get(host, port, Instant::now()) {
            return Ok(addrs);
        }
        // getaddrinfo has its own retries; this bounds the whole lookup.
        let wait = self.settings.connect_timeout;
        let addrs = match tokio::time::timeout(wait, self.resolver.resolve(host, port)).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("no answer within {} s", wait.as_secs_f32())),
        };
        self.dns.put(host, port, &addrs, Instant::now());
        Ok(addrs)
    }

    /// Resolve and vet every address; connect to the first that answers.
    /// All addresses are vetted before any is tried, so a name that mixes a
    /// public and an internal answer is refused outright.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, (StatusCode, Refusal)> {
        let addrs = self.lookup(host, port).await.map_err(|e| {
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
    // The accept loop runs as a task on a worker, not on the caller's
    // thread: a connection task spawned from a worker starts on that same
    // worker as soon as the loop waits again, instead of waking another
    // thread (a measurable share of a new tunnel's latency, docs/BENCHMARKS.md).
    let accept = tokio::spawn(accept_loop(proxy.clone(), listener));
    shutdown.await;
    accept.abort();
    // Wait until the listener is closed before saying so.
    let _ = accept.await;
    proxy.emit(serde_json::json!({"time": rfc3339_now(), "event": "shutdown"}));
    Ok(())
}

async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
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

async fn serve_connection(proxy: Arc<Proxy>, stream: TcpStream) {
    let started = Instant::now();
    let p = proxy.clone();
    let ambiguous = Arc::new(AtomicU8::new(0));
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

async fn handle(proxy: Arc<Proxy>, req: Request<Incoming>, ambiguous: &AtomicU8) -> Response<Body> {
    if let Some(why) = framing::Ambiguity::raised(ambiguous) {
        // Whatever this request is, a head on this connection had ambiguous
        // framing: answer 400 and close before acting on anything.
        return pending::Pending::new(&proxy, "-", "").refuse(
            StatusCode::BAD_REQUEST,
            why.reason().to_string(),
            true,
        );
    }
    if req.method() == Method::CONNECT {
        connect::handle_connect(proxy, req).await
    } else if req.uri().scheme().is_none() && proxy.vault.as_ref().is_some_and(|v| v.api.is_some())
    {
        let vault = proxy.vault.clone().expect("checked above");
        route::handle_api(proxy, vault, req).await
    } else {
        forward::handle_http(proxy, req).await
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
