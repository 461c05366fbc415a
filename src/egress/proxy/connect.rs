//! `CONNECT host:port`: parse and check the target, resolve and connect,
//! answer 200, then (on 443 with SNI verification) check the ClientHello
//! before relaying a byte.
//!
//! Invariant: one decision line per CONNECT (see `pending`), written when
//! the tunnel is refused or closes, or when the client or proxy cut it short.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::pending::Pending;
use super::target::parse_authority;
use super::{Body, Proxy, relay, sni};

pub(super) async fn handle_connect(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let mut d = Pending::new(&proxy, "CONNECT", &raw);
    if req.uri().scheme().is_some()
        || req
            .uri()
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return d.refuse(
            StatusCode::BAD_REQUEST,
            "CONNECT target is not host:port".into(),
            true,
        );
    }
    let (host, port) = match parse_authority(&raw, None) {
        Ok(t) => t,
        Err(r) => return d.refuse(StatusCode::FORBIDDEN, r.reason, true),
    };
    d.target(&host, port);
    if let Err(r) = proxy.check_policy(&host, port, true) {
        return d.refuse(StatusCode::FORBIDDEN, r.reason, true);
    }
    let Ok(permit) = proxy.tunnels.clone().try_acquire_owned() else {
        return d.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many tunnels".into(),
            true,
        );
    };
    d.under_way(
        "deny",
        "client went away while the proxy resolved the name and connected; nothing forwarded",
    );
    let upstream = match proxy.connect(&host, port).await {
        Ok(s) => s,
        Err((status, r)) => return d.refuse(status, r.reason, true),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let p = proxy.clone();
    d.under_way(
        "deny",
        "proxy stopped before the tunnel was set up; nothing forwarded",
    );
    tokio::spawn(async move {
        let _permit = permit;
        match upgrade.await {
            Ok(u) => tunnel(p, d, TokioIo::new(u), upstream, port).await,
            Err(e) => d.finish("deny", format!("upgrade failed: {e}"), 0, 0),
        }
    });
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Check the ClientHello (443 with SNI verification on), then relay.
async fn tunnel(
    proxy: Arc<Proxy>,
    mut d: Pending,
    mut client: TokioIo<hyper::upgrade::Upgraded>,
    mut upstream: TcpStream,
    port: u16,
) {
    let mut up_prefix = 0u64;
    if port == 443 && proxy.settings.sni_verification {
        d.under_way(
            "deny",
            "proxy stopped while waiting for the ClientHello; nothing forwarded",
        );
        let hello = tokio::time::timeout(
            proxy.settings.hello_timeout,
            sni::read_client_hello(&mut client),
        )
        .await;
        let (raw, sni) = match hello {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return d.finish("deny", format!("SNI check: {e}"), 0, 0),
            Err(_) => {
                return d.finish("deny", "SNI check: no ClientHello in time".into(), 0, 0);
            }
        };
        match sni.as_deref().map(crate::host::normalize) {
            None => return d.finish("deny", "SNI missing".into(), 0, 0),
            Some(Ok(name)) if name == d.host() => {}
            Some(_) => {
                let shown = sni.unwrap_or_default();
                let reason = format!("SNI mismatch: `{}`", shown.escape_debug());
                return d.finish("deny", reason, 0, 0);
            }
        }
        if upstream.write_all(&raw).await.is_err() {
            return d.finish("deny", "upstream closed".into(), 0, 0);
        }
        up_prefix = raw.len() as u64;
    }
    d.under_way("allow", "tunnel cut: the proxy stopped");
    let outcome = relay::relay(
        client,
        upstream,
        proxy.settings.max_tunnel,
        proxy.settings.idle_timeout,
    )
    .await;
    d.finish(
        "allow",
        format!("tunnel closed: {}", outcome.end),
        outcome.up + up_prefix,
        outcome.down,
    );
}
