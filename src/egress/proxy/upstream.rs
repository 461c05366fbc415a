//! Requests the proxy itself sends over TLS (the model API route and
//! intercepted tunnels): one verified HTTP/1.1 connection to `host:443`,
//! the request's body scanned before anything is sent, the bound credential
//! put in, responses scrubbed of real values.
//!
//! Invariants: the upstream certificate is verified against the Mozilla
//! roots (plus the test CA the secrets message names) for exactly `host`;
//! a body is sent only after it was scanned whole, and a body over the
//! scanning bound is refused (413), never sent unscanned.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::secrets::Vault;
use super::{Body, Proxy};

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// TLS to `host` on an already-connected stream, verified.
pub(crate) async fn tls(
    vault: &Vault,
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad server name: {e}"))?;
    tokio_rustls::TlsConnector::from(vault.upstream_tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| {
            format!("upstream TLS failed (certificate not verified or handshake refused): {e}")
        })
}

/// HTTP/1.1 client over a TLS stream.
pub(crate) async fn handshake(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<Sender, String> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Connect (policy already checked), TLS, handshake.
pub(crate) async fn open(
    proxy: &Proxy,
    vault: &Vault,
    host: &str,
) -> Result<Sender, (StatusCode, String)> {
    let tcp = proxy
        .connect(host, 443)
        .await
        .map_err(|(s, r)| (s, r.reason))?;
    let tls = tls(vault, host, tcp)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e))?;
    handshake(tls)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e))
}

/// Scan a request (head, then whole body up to the bound). Returns the body
/// to send, or the refusal `(status, reason)`.
pub(crate) async fn scan_request(
    vault: &Vault,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), (StatusCode, String)> {
    let (parts, body) = req.into_parts();
    let uri = parts.uri.to_string();
    if let Some(what) = vault.scanner.find_head(&uri, &parts.headers) {
        return Err((StatusCode::FORBIDDEN, what));
    }
    let bytes = match Limited::new(body, vault.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "request body over {} bytes, the scanning bound; not sent",
                        vault.max_body
                    ),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            });
        }
    };
    let enc = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    if let Some(what) = vault.scanner.find_body(&bytes, enc) {
        return Err((StatusCode::FORBIDDEN, what));
    }
    Ok((parts, bytes))
}

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Set the header value with the placeholder replaced, or leave it.
pub(crate) fn set_header(headers: &mut hyper::HeaderMap, name: &str, value: &str) -> bool {
    match (
        hyper::header::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(n), Ok(mut v)) => {
            v.set_sensitive(true);
            headers.insert(n, v);
            true
        }
        _ => false,
    }
}

/// A response body with every real value replaced by its placeholder, chunk
/// by chunk (a value split across two chunks passes; the bound hosts'
/// responses are asked for uncompressed so the value is visible).
pub(crate) struct Scrubbed {
    inner: Incoming,
    pairs: Arc<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Scrubbed {
    pub(crate) fn new(inner: Incoming, pairs: Arc<Vec<(Vec<u8>, Vec<u8>)>>) -> Scrubbed {
        Scrubbed { inner, pairs }
    }
}

impl hyper::body::Body for Scrubbed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let pairs = self.pairs.clone();
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame.map_data(|d| {
                let mut data = d;
                for (real, fake) in pairs.iter() {
                    if memfind(&data, real) {
                        data = Bytes::from(replace_all(&data, real, fake));
                    }
                }
                data
            })))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Same-length replacement: the size is unchanged.
        self.inner.size_hint()
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// (real, placeholder) pairs for every secret, for [`Scrubbed`].
pub(crate) fn scrub_pairs(vault: &Vault) -> Arc<Vec<(Vec<u8>, Vec<u8>)>> {
    Arc::new(
        vault
            .secrets
            .iter()
            .map(|s| {
                (
                    s.value.as_bytes().to_vec(),
                    s.placeholder.as_bytes().to_vec(),
                )
            })
            .collect(),
    )
}
