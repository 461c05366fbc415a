//! TLS interception of tunnels to hosts a secret is bound to.
//!
//! For `CONNECT host:443` where `host` is bound: the proxy first connects to
//! the upstream and verifies its certificate (Mozilla roots plus the test CA
//! the secrets message names); only then does it answer 200, mint a leaf for
//! `host` with the per-run CA (cached per host) and terminate the agent's TLS
//! with it (ALPN offers only `http/1.1`). Each request inside the tunnel is
//! checked, scanned, has the placeholder replaced in the bound header, and
//! goes out on the one verified upstream connection.
//!
//! Invariants:
//! - An upstream whose certificate does not verify is refused (502) and no
//!   leaf is minted for it (a `leaf` log event is written per mint).
//! - Every request's `Host` is exactly the CONNECT host (port 443 or none);
//!   absolute-form, fronting, or a kept-alive request naming another host is
//!   refused and the tunnel closed.
//! - The real value goes only into the bound header of a request to a bound
//!   host; anywhere else the placeholder stays as the agent wrote it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::forward::{method_name, strip_hop_by_hop};
use super::pending::Pending;
use super::secrets::{CaKey, Vault};
use super::target::parse_authority;
use super::upstream::{self, Scrubbed, Sender};
use super::{Body, Proxy, rfc3339_now};

/// Leaves minted so far, per host.
#[derive(Default)]
pub struct Leaves(Mutex<HashMap<String, Arc<rustls::ServerConfig>>>);

impl Leaves {
    fn get(
        &self,
        proxy: &Proxy,
        ca: &CaKey,
        host: &str,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        if let Some(c) = self.0.lock().ok().and_then(|m| m.get(host).cloned()) {
            return Ok(c);
        }
        let cfg = Arc::new(mint(ca, host)?);
        if let Ok(mut m) = self.0.lock() {
            m.insert(host.to_string(), cfg.clone());
        }
        proxy.emit(serde_json::json!({"time": rfc3339_now(), "event": "leaf", "host": host}));
        Ok(cfg)
    }
}

/// The CA's parameters; `bottle run` makes the CA certificate from the same
/// ones, so the issuer rebuilt here matches it.
pub fn ca_params(common_name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn mint(ca: &CaKey, host: &str) -> Result<rustls::ServerConfig, String> {
    let e = |e: rcgen::Error| format!("minting a leaf: {e}");
    let key = rcgen::KeyPair::from_pem(&ca.key_pem).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params(&ca.common_name), key);
    let leaf_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(e)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&leaf_key, &issuer).map_err(e)?;
    let der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| format!("leaf key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .map_err(|e| format!("TLS: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// After the policy check of `CONNECT host:443` to a bound host.
pub(super) async fn handle(
    proxy: Arc<Proxy>,
    vault: Arc<Vault>,
    mut req: Request<Incoming>,
    mut d: Pending,
    host: String,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    let Some(ca) = vault.ca.clone() else {
        return d.refuse(StatusCode::INTERNAL_SERVER_ERROR, "no CA".into(), true);
    };
    d.under_way(
        "deny",
        "client went away while the proxy verified the upstream",
    );
    let sender = match upstream::open(&proxy, &vault, &host).await {
        Ok(s) => s,
        Err((status, why)) => return d.refuse(status, format!("{why}; not intercepted"), true),
    };
    let server = match proxy.leaves.get(&proxy, &ca, &host) {
        Ok(c) => c,
        Err(why) => return d.refuse(StatusCode::INTERNAL_SERVER_ERROR, why, true),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    d.under_way("deny", "proxy stopped before the tunnel was set up");
    let p = proxy.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let client = match upgrade.await {
            Ok(u) => u,
            Err(e) => return d.finish("deny", format!("upgrade failed: {e}"), 0, 0),
        };
        let tls = match tokio_rustls::TlsAcceptor::from(server)
            .accept(TokioIo::new(client))
            .await
        {
            Ok(t) => t,
            Err(e) => return d.finish("deny", format!("agent TLS failed: {e}"), 0, 0),
        };
        d.under_way("allow", "intercepted tunnel cut: the proxy stopped");
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let (pp, vv, hh) = (p.clone(), vault.clone(), host.clone());
        let svc = hyper::service::service_fn(move |r| {
            let (pp, vv, hh, ss) = (pp.clone(), vv.clone(), hh.clone(), sender.clone());
            async move { Ok::<_, std::convert::Infallible>(inner(pp, vv, &hh, ss, r).await) }
        });
        let res = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(p.settings.idle_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(tls), svc)
            .await;
        let end = match res {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        };
        d.finish("allow", format!("intercepted tunnel closed: {end}"), 0, 0);
    });
    let mut resp = Response::new(upstream::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// One request inside an intercepted tunnel.
async fn inner(
    proxy: Arc<Proxy>,
    vault: Arc<Vault>,
    host: &str,
    sender: Arc<tokio::sync::Mutex<Sender>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut d = Pending::new(&proxy, method_name(req.method()), host);
    d.target(host, 443);
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        return d.refuse(
            StatusCode::BAD_REQUEST,
            "absolute-form request inside an intercepted tunnel".into(),
            true,
        );
    }
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let same = match hosts.as_slice() {
        [one] => one
            .to_str()
            .ok()
            .and_then(|v| parse_authority(v, Some(443)).ok())
            .is_some_and(|(h, p)| h == host && p == 443),
        _ => false,
    };
    if !same {
        return d.refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "Host does not name the CONNECT host (domain fronting refused)".into(),
            true,
        );
    }
    let (mut parts, body) = match upstream::scan_request(&vault, req).await {
        Ok(x) => x,
        Err((status, why)) => return d.refuse(status, format!("dlp: {why}"), false),
    };
    strip_hop_by_hop(&mut parts.headers);
    let mut injected = Vec::new();
    for held in vault.bound_to(host) {
        let name = held.header.header_name();
        let Some(real) = parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| held.inject(v))
        else {
            continue;
        };
        if upstream::set_header(&mut parts.headers, name, &real) {
            injected.push(held.name.clone());
        }
    }
    // Uncompressed responses, so echoed values can be scrubbed.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let up = body.len() as u64;
    d.under_way("allow", "client went away before the upstream answered");
    let mut s = sender.lock().await;
    if s.ready().await.is_err() {
        return d.refuse(
            StatusCode::BAD_GATEWAY,
            "upstream connection closed".into(),
            true,
        );
    }
    let fut = s.send_request(Request::from_parts(parts, upstream::full(body)));
    let resp = match tokio::time::timeout(proxy.settings.idle_timeout, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return d.refuse(StatusCode::BAD_GATEWAY, format!("upstream: {e}"), true),
        Err(_) => {
            return d.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream did not answer".into(),
                true,
            );
        }
    };
    drop(s);
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let status = rparts.status.as_u16();
    let what = if injected.is_empty() {
        "intercepted, nothing injected".to_string()
    } else {
        format!("intercepted, injected {}", injected.join(", "))
    };
    d.finish("allow", format!("{what}, upstream status {status}"), up, 0);
    use http_body_util::BodyExt as _;
    Response::from_parts(
        rparts,
        Scrubbed::new(rbody, upstream::scrub_pairs(&vault)).boxed(),
    )
}
