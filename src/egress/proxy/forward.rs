//! Absolute-form `http://host[:80]/…` requests: framing, shape, target and
//! Host checks, then one upstream connection per request with hop-by-hop
//! headers stripped both ways.
//!
//! Invariants: ambiguous framing (see `framing`) is answered 400 and the
//! connection closed before anything else; one decision line per request
//! (see `pending`), written at the upstream's response head, at the refusal,
//! or when the client goes away first; an upstream that does not answer
//! within the idle timeout gets 504.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::framing::{Ambiguity, exactly_chunked};
use super::pending::Pending;
use super::target::parse_authority;
use super::{Body, Proxy};

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

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Framing (as hyper parsed it; the raw-byte watch in `framing` has already
/// run) and request shape. `Err((status, reason, close))`.
fn check_shape(req: &Request<Incoming>) -> Result<(), (StatusCode, String, bool)> {
    // Framing first: an ambiguous body length is a smuggling attempt whatever
    // the target, and the connection cannot be trusted afterwards.
    let h = req.headers();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    let bad = |why: Ambiguity| Err((StatusCode::BAD_REQUEST, why.reason().to_string(), true));
    if cl > 1 {
        return bad(Ambiguity::ContentLength);
    }
    if cl > 0 && !te.is_empty() {
        return bad(Ambiguity::BothLengths);
    }
    if te.len() > 1 || te.iter().any(|v| !exactly_chunked(v.as_bytes())) {
        return bad(Ambiguity::TransferEncoding);
    }
    if req.method() == Method::TRACE {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "TRACE refused".into(),
            false,
        ));
    }
    match req.uri().scheme_str() {
        Some("http") => Ok(()),
        Some(_) => Err((
            StatusCode::BAD_REQUEST,
            "only http:// in absolute form; use CONNECT for https".into(),
            false,
        )),
        None => Err((
            StatusCode::BAD_REQUEST,
            "not a proxy request (origin-form); this endpoint serves nothing itself".into(),
            false,
        )),
    }
}

/// The request's one Host header names the URI's authority.
fn host_matches(req: &Request<Incoming>, host: &str, port: u16) -> bool {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    match hosts.as_slice() {
        [one] => one
            .to_str()
            .ok()
            .and_then(|v| parse_authority(v, Some(80)).ok())
            .is_some_and(|(h, p)| h == host && p == port),
        _ => false,
    }
}

pub(super) async fn handle_http(proxy: Arc<Proxy>, req: Request<Incoming>) -> Response<Body> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let mut d = Pending::new(&proxy, method_name(req.method()), &raw);
    if let Err((status, reason, close)) = check_shape(&req) {
        return d.refuse(status, reason, close);
    }
    let (host, port) = match parse_authority(&raw, Some(80)) {
        Ok(t) => t,
        Err(r) => return d.refuse(StatusCode::FORBIDDEN, r.reason, false),
    };
    d.target(&host, port);
    if !host_matches(&req, &host, port) {
        return d.refuse(
            StatusCode::BAD_REQUEST,
            "Host header does not match the request URI".into(),
            true,
        );
    }
    if let Err(r) = proxy.check_policy(&host, port, false) {
        return d.refuse(StatusCode::FORBIDDEN, r.reason, false);
    }
    d.under_way(
        "deny",
        "client went away while the proxy resolved the name and connected; nothing forwarded",
    );
    let stream = match proxy.connect(&host, port).await {
        Ok(s) => s,
        Err((status, r)) => return d.refuse(status, r.reason, false),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return d.refuse(StatusCode::BAD_GATEWAY, format!("upstream: {e}"), false),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return d.refuse(StatusCode::BAD_REQUEST, "bad request path".into(), false),
    };
    strip_hop_by_hop(&mut parts.headers);
    d.under_way("allow", "client went away before the upstream answered");
    let wait = proxy.settings.idle_timeout;
    let resp =
        match tokio::time::timeout(wait, sender.send_request(Request::from_parts(parts, body)))
            .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                return d.refuse(StatusCode::BAD_GATEWAY, format!("upstream: {e}"), false);
            }
            Err(_) => {
                let reason = format!("upstream did not answer within {} s", wait.as_secs_f32());
                return d.refuse(StatusCode::GATEWAY_TIMEOUT, reason, false);
            }
        };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let down = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let status = parts.status.as_u16();
    d.finish(
        "allow",
        format!("forwarded, upstream status {status}"),
        0,
        down,
    );
    Response::from_parts(parts, body.boxed())
}
