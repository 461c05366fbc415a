//! The model API route: the agent's `ANTHROPIC_BASE_URL` is
//! `http://<sidecar>:<port>`, so its API requests arrive here in origin form
//! over plain HTTP on the internal network. The proxy scans each one, puts
//! the real credential in the header the API expects (`Authorization:
//! Bearer` for an OAuth token, `x-api-key` for an API key; any credential
//! header the agent sent is dropped), and forwards it over verified TLS to
//! the API host. The response streams back as it arrives (no buffering).
//!
//! Invariants: the API host must be allowlisted (the same policy check as a
//! CONNECT to it); one decision line per request; a request carrying a
//! secret is refused 403 and nothing is sent.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::forward::{method_name, strip_hop_by_hop};
use super::pending::Pending;
use super::secrets::Vault;
use super::upstream::{self, Scrubbed};
use super::{Body, Proxy};

pub(super) async fn handle_api(
    proxy: Arc<Proxy>,
    vault: Arc<Vault>,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(api) = vault.api.clone() else {
        return Pending::new(&proxy, method_name(req.method()), "").refuse(
            StatusCode::BAD_REQUEST,
            "not a proxy request (origin-form); this endpoint serves nothing itself".into(),
            false,
        );
    };
    let mut d = Pending::new(&proxy, method_name(req.method()), &api.host);
    d.target(&api.host, 443);
    if let Err(r) = proxy.check_policy(&api.host, 443, true) {
        return d.refuse(
            StatusCode::FORBIDDEN,
            format!("API route: {}", r.reason),
            false,
        );
    }
    if req
        .uri()
        .path_and_query()
        .is_none_or(|p| !p.as_str().starts_with('/'))
    {
        return d.refuse(StatusCode::BAD_REQUEST, "API route: bad path".into(), false);
    }
    let (mut parts, body) = match upstream::scan_request(&vault, req).await {
        Ok(x) => x,
        Err((status, why)) => return d.refuse(status, format!("dlp: {why}"), false),
    };
    let Some(held) = vault.by_name(&api.secret) else {
        return d.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "API route: no secret".into(),
            false,
        );
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove("x-api-key");
    let (name, value) = match api.header.as_str() {
        "x-api-key" => ("x-api-key", held.value.clone()),
        _ => ("authorization", format!("Bearer {}", held.value)),
    };
    upstream::set_header(&mut parts.headers, name, &value);
    if let Ok(h) = HeaderValue::from_str(&api.host) {
        parts.headers.insert(header::HOST, h);
    }
    d.under_way(
        "deny",
        "client went away while the proxy connected to the API; nothing forwarded",
    );
    let mut sender = match upstream::open(&proxy, &vault, &api.host).await {
        Ok(s) => s,
        Err((status, why)) => return d.refuse(status, why, false),
    };
    let up = body.len() as u64;
    d.under_way("allow", "client went away before the API answered");
    let req = Request::from_parts(parts, upstream::full(body));
    let resp = match tokio::time::timeout(proxy.settings.idle_timeout, sender.send_request(req))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return d.refuse(StatusCode::BAD_GATEWAY, format!("upstream: {e}"), false),
        Err(_) => {
            return d.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "API did not answer in time".into(),
                false,
            );
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let status = rparts.status.as_u16();
    d.finish(
        "allow",
        format!(
            "API route: injected {}, upstream status {status}",
            held.name
        ),
        up,
        0,
    );
    let body = Scrubbed::new(rbody, upstream::scrub_pairs(&vault));
    use http_body_util::BodyExt as _;
    Response::from_parts(rparts, body.boxed())
}
