//! The sidecar's secrets: the message `bottle run` writes to the sidecar's
//! stdin, the placeholders the agent gets instead, and the compiled
//! [`Vault`] the proxy injects and scans with.
//!
//! Invariants:
//! - Real values arrive only over stdin ([`read_message`], bounded to
//!   [`MAX_MESSAGE_BYTES`]); they are never logged, never put in a decision
//!   line, never written anywhere. `Debug` of a [`Held`] shows the name only.
//! - A placeholder has the value's shape (same length, same prefix up to the
//!   last `-`/`_` of the first 16 characters, each other character replaced
//!   by a random one of the same class) and never equals the value.
//! - The run CA's private key exists only here, in memory.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::scan::Scanner;
use crate::egress::EgressError;
use crate::host::Pattern;

/// The largest secrets message accepted (a few secrets and a CA: a few KiB).
pub const MAX_MESSAGE_BYTES: u64 = 256 * 1024;

/// Default bound on the request body the proxy buffers to scan.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Common name of a run's interception CA; the sidecar rebuilds the issuer
/// from it and the key (no certificate parser needed).
pub fn ca_common_name(run_id: &str) -> String {
    format!("bottle run CA {run_id}")
}

/// What the runner sends over the sidecar's stdin, as one JSON document.
#[derive(Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Message {
    #[serde(default)]
    pub secrets: Vec<SecretEntry>,
    /// The model API route: origin-form requests to the proxy go here.
    #[serde(default)]
    pub api_route: Option<ApiRoute>,
    /// Extra PEM roots for upstream TLS (test upstreams); the Mozilla roots
    /// are always trusted.
    #[serde(default)]
    pub upstream_ca_pem: Option<String>,
    /// The per-run interception CA (needed when a secret is bound to hosts).
    #[serde(default)]
    pub intercept_ca: Option<CaKey>,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Secret patterns added to the defaults (pipelock's `dlp.patterns`
    /// shape).
    #[serde(default)]
    pub dlp_patterns: Vec<DlpPattern>,
}

/// One secret pattern: a name for decision lines and a regex.
#[derive(Deserialize, serde::Serialize, Clone)]
pub struct DlpPattern {
    pub name: String,
    pub regex: String,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    pub name: String,
    pub value: String,
    pub placeholder: String,
    /// Hosts (patterns) the value may be sent to, in `header`.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ApiRoute {
    /// Upstream host (443, TLS).
    pub host: String,
    /// Name of the secret the route authenticates with.
    pub secret: String,
    /// `bearer` (OAuth token) or `x-api-key` (API key).
    pub header: String,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CaKey {
    pub common_name: String,
    pub key_pem: String,
}

/// Where a bound secret goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKind {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `Authorization: Basic base64(user:<value>)` (git over HTTPS).
    Basic,
    /// The value as the whole (or part of the) named header.
    Named(String),
}

impl HeaderKind {
    pub fn parse(s: &str) -> Result<HeaderKind, String> {
        match s.to_ascii_lowercase().as_str() {
            "bearer" => Ok(HeaderKind::Bearer),
            "basic" => Ok(HeaderKind::Basic),
            other => {
                if !other.is_empty()
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    Ok(HeaderKind::Named(other.to_string()))
                } else {
                    Err(format!(
                        "`{s}` is not `bearer`, `basic` or a header name (letters, digits, `-`)"
                    ))
                }
            }
        }
    }

    pub fn header_name(&self) -> &str {
        match self {
            HeaderKind::Bearer | HeaderKind::Basic => "authorization",
            HeaderKind::Named(n) => n,
        }
    }
}

/// One secret as the proxy holds it.
pub struct Held {
    pub name: String,
    pub value: String,
    pub placeholder: String,
    pub hosts: Vec<Pattern>,
    pub header: HeaderKind,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({})", self.name)
    }
}

impl Held {
    /// Put the real value where the placeholder is in `header_value`, if
    /// this is the bound header. `None`: nothing to replace.
    pub fn inject(&self, header_value: &str) -> Option<String> {
        match self.header {
            HeaderKind::Basic => {
                let rest = header_value.strip_prefix("Basic ")?;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()?;
                let text = String::from_utf8(raw).ok()?;
                if !text.contains(&self.placeholder) {
                    return None;
                }
                let real = text.replace(&self.placeholder, &self.value);
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(real)
                ))
            }
            _ => header_value
                .contains(&self.placeholder)
                .then(|| header_value.replace(&self.placeholder, &self.value)),
        }
    }
}

/// The compiled secrets: what the proxy injects, and scans for.
pub struct Vault {
    pub secrets: Vec<Held>,
    pub api: Option<ApiRoute>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
    pub ca: Option<CaKey>,
    pub max_body: usize,
    pub scanner: Scanner,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

fn bad(msg: impl Into<String>) -> EgressError {
    EgressError::Config {
        path: "<secrets on stdin>".into(),
        msg: msg.into(),
    }
}

impl Vault {
    /// Compile a message. Errors name the entry, never a value.
    pub fn from_message(m: Message) -> Result<Vault, EgressError> {
        let mut secrets = Vec::new();
        for (i, s) in m.secrets.into_iter().enumerate() {
            if s.value.is_empty() || s.value == s.placeholder {
                return Err(bad(format!(
                    "secrets[{i}] ({}): empty value, or placeholder equal to the value",
                    s.name
                )));
            }
            let hosts = s
                .hosts
                .iter()
                .map(|h| {
                    Pattern::parse(h).map_err(|e| bad(format!("secrets[{i}].hosts: `{h}` {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let header = match &s.header {
                Some(h) => {
                    HeaderKind::parse(h).map_err(|e| bad(format!("secrets[{i}].header: {e}")))?
                }
                None => HeaderKind::Bearer,
            };
            secrets.push(Held {
                name: s.name,
                value: s.value,
                placeholder: s.placeholder,
                hosts,
                header,
            });
        }
        if let Some(api) = &m.api_route {
            if !secrets.iter().any(|s| s.name == api.secret) {
                return Err(bad(format!(
                    "api_route.secret `{}` names no secret in the message",
                    api.secret
                )));
            }
            if !matches!(api.header.as_str(), "bearer" | "x-api-key") {
                return Err(bad("api_route.header must be `bearer` or `x-api-key`"));
            }
        }
        if let Some(ca) = &m.intercept_ca {
            rcgen::KeyPair::from_pem(&ca.key_pem)
                .map_err(|e| bad(format!("intercept_ca.key_pem: {e}")))?;
        }
        let upstream_tls = upstream_config(m.upstream_ca_pem.as_deref())?;
        let extra: Vec<(String, String)> = m
            .dlp_patterns
            .iter()
            .map(|p| (p.name.clone(), p.regex.clone()))
            .collect();
        let scanner = Scanner::with_patterns(&secrets, &extra)
            .map_err(|e| bad(format!("dlp_patterns: {e}")))?;
        Ok(Vault {
            secrets,
            api: m.api_route,
            upstream_tls,
            ca: m.intercept_ca,
            max_body: m.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            scanner,
        })
    }

    /// Secrets bound to `host` (normalized).
    pub fn bound_to<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Held> + 'a {
        self.secrets
            .iter()
            .filter(move |s| s.hosts.iter().any(|p| p.matches(host)))
    }

    /// Whether the proxy intercepts TLS to `host`.
    pub fn intercepts(&self, host: &str) -> bool {
        self.ca.is_some() && self.bound_to(host).next().is_some()
    }

    pub fn by_name(&self, name: &str) -> Option<&Held> {
        self.secrets.iter().find(|s| s.name == name)
    }
}

/// Client TLS for upstreams: the Mozilla roots plus `extra_pem`, HTTP/1.1.
pub fn upstream_config(extra_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, EgressError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        use rustls::pki_types::pem::PemObject as _;
        let mut n = 0;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let c = c.map_err(|e| bad(format!("upstream_ca_pem: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("upstream_ca_pem: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("upstream_ca_pem holds no certificate"));
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Read the secrets message from `source` until EOF, bounded.
pub async fn read_message(source: impl AsyncRead + Unpin) -> Result<Message, EgressError> {
    let mut bytes = Vec::new();
    source
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| EgressError::Read {
            path: "<secrets on stdin>".into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(bad(format!(
            "larger than {} KiB; `bottle run` writes a few KiB",
            MAX_MESSAGE_BYTES >> 10
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Message::default());
    }
    // serde_json's errors quote no input, so a value cannot leak through them.
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not the JSON `bottle run` writes: {e}")))
}

/// A placeholder of `value`'s shape (see the module invariants).
pub fn placeholder(value: &str) -> String {
    let keep = prefix_len(value);
    let mut random = vec![0u8; value.len() * 2 + 16];
    loop {
        fill_random(&mut random);
        let mut r = random.iter();
        let out: String = value
            .char_indices()
            .map(|(i, c)| {
                let x = *r.next().unwrap_or(&0) as usize;
                if i < keep {
                    c
                } else if c.is_ascii_lowercase() {
                    (b'a' + (x % 26) as u8) as char
                } else if c.is_ascii_uppercase() {
                    (b'A' + (x % 26) as u8) as char
                } else if c.is_ascii_digit() {
                    (b'0' + (x % 10) as u8) as char
                } else {
                    c
                }
            })
            .collect();
        if out != value || keep == value.len() || value.chars().all(|c| !c.is_ascii_alphanumeric())
        {
            return out;
        }
    }
}

/// Length of the kept prefix: through the last `-` or `_` among the first
/// 16 characters, when everything before is lowercase ASCII, digits or
/// separators (`sk-ant-oat01-`, `ghp_`, `github_pat_`).
fn prefix_len(value: &str) -> usize {
    let head: Vec<char> = value.chars().take(16).collect();
    let mut keep = 0;
    for (i, c) in head.iter().enumerate() {
        if *c == '-' || *c == '_' {
            keep = i + 1;
        } else if !(c.is_ascii_lowercase() || c.is_ascii_digit()) {
            break;
        }
    }
    // Never keep most of the value: a short secret must still change.
    if keep * 2 > value.len() { 0 } else { keep }
}

/// Random bytes from the kernel (no RNG crate needed).
pub fn fill_random(buf: &mut [u8]) {
    use std::io::Read as _;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // No /dev/urandom: fall back to hashing the time and address; still a
    // fresh placeholder per run, which is all the shape needs.
    use sha2::Digest as _;
    let seed = format!("{:?}{:p}", std::time::SystemTime::now(), buf);
    let mut h = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    for (i, b) in buf.iter_mut().enumerate() {
        if i % 32 == 0 && i > 0 {
            h = sha2::Sha256::digest(&h).to_vec();
        }
        *b = h[i % 32];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_keeps_shape_and_differs() {
        let v = "sk-ant-oat01-AbCdEf0123456789_xyz-QRSTuvwx";
        let p = placeholder(v);
        assert_eq!(p.len(), v.len());
        assert!(p.starts_with("sk-ant-oat01-"), "{p}");
        assert_ne!(p, v);
        for (a, b) in v.chars().zip(p.chars()) {
            assert_eq!(a.is_ascii_lowercase(), b.is_ascii_lowercase());
            assert_eq!(a.is_ascii_uppercase(), b.is_ascii_uppercase());
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
        }
        let g = placeholder("ghp_0123456789abcdefABCDEF0123456789abcd");
        assert!(g.starts_with("ghp_") && g.len() == 40, "{g}");
        assert_ne!(placeholder("abc"), "abc");
    }

    #[test]
    fn basic_injection_replaces_inside_the_credentials() {
        let h = Held {
            name: "T".into(),
            value: "real-token".into(),
            placeholder: "fake-token".into(),
            hosts: vec![],
            header: HeaderKind::Basic,
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let sent = format!("Basic {}", b64.encode("x-access-token:fake-token"));
        let out = h.inject(&sent).unwrap();
        assert_eq!(
            b64.decode(out.strip_prefix("Basic ").unwrap()).unwrap(),
            b"x-access-token:real-token"
        );
        assert_eq!(h.inject("Bearer fake-token"), None);
    }
}
