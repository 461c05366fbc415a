//! Secret scanning: does a request carry a secret the sidecar holds?
//!
//! Every secret's exact value is searched for raw, base64 (standard and
//! URL-safe alphabets, at each of the three byte alignments, so a value
//! embedded in a larger encoded blob such as `user:token` is found too), hex
//! (either case) and percent-encoded. URLs, header values and form bodies are
//! also searched after percent-decoding; bodies after gzip/deflate decoding
//! (bounded). Host names (CONNECT targets, SNI, Host) are searched
//! case-insensitively.
//!
//! Invariants: a match names the secret and the encoding, never the value;
//! values shorter than [`MIN_ENCODED_LEN`] are searched raw only (their
//! encodings are too short to be told from ordinary text).
//!
//! Besides held values, every scanned text is matched against secret
//! *patterns* (pipelock's `dlp.patterns` shape: a name and a regex):
//! [`DEFAULT_PATTERNS`] for common provider keys, plus any the run adds. A
//! pattern match that lies inside one of the run's own placeholders is not a
//! match (placeholders have the shape of real tokens by design).
//!
//! Not caught: a value split across two requests (each half alone is not the
//! value); values under an encoding not listed (e.g. base32, reversed).

use aho_corasick::AhoCorasick;
use base64::Engine as _;

use super::secrets::Held;

/// Shortest value whose encodings are searched.
pub const MIN_ENCODED_LEN: usize = 8;

/// Largest decoded body searched; decoding stops there (a zip bomb costs
/// the proxy this much at most).
const MAX_DECODED: u64 = 64 * 1024 * 1024;

/// Secret patterns always applied: (name, regex). Names appear in decision
/// lines; the matched text never does.
pub const DEFAULT_PATTERNS: &[(&str, &str)] = &[
    ("Anthropic API key", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    (
        "OpenAI API key",
        r"sk-(?:proj-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}",
    ),
    ("GitHub token", r"gh[pousr]_[A-Za-z0-9]{36,}"),
    ("GitHub fine-grained token", r"github_pat_[A-Za-z0-9_]{36,}"),
    ("AWS access key ID", r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    ("Slack token", r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    (
        "Slack webhook",
        r"hooks\.slack\.com/services/T[A-Za-z0-9_/]+",
    ),
    ("Google API key", r"AIza[0-9A-Za-z_-]{35}"),
    ("Stripe secret key", r"(?:sk|rk)_live_[0-9A-Za-z]{20,}"),
    ("private key", r"-----BEGIN[ A-Z]*PRIVATE KEY-----"),
];

pub struct Scanner {
    exact: Option<AhoCorasick>,
    patterns: Vec<(String, regex::bytes::Regex)>,
    pattern_labels: Vec<String>,
    placeholders: Option<AhoCorasick>,
    hosts: Option<AhoCorasick>,
    labels: Vec<String>,
    host_labels: Vec<String>,
}

impl Scanner {
    /// A scanner for `secrets` with the default patterns only.
    pub fn new(secrets: &[Held]) -> Scanner {
        Scanner::with_patterns(secrets, &[]).expect("default patterns compile")
    }

    /// A scanner for `secrets` with the default patterns and `extra`
    /// (name, regex); errors name the pattern that does not compile.
    pub fn with_patterns(secrets: &[Held], extra: &[(String, String)]) -> Result<Scanner, String> {
        let mut patterns = Vec::new();
        let defaults = DEFAULT_PATTERNS
            .iter()
            .map(|(n, r)| (n.to_string(), r.to_string()));
        for (name, re) in defaults.chain(extra.iter().cloned()) {
            let compiled =
                regex::bytes::Regex::new(&re).map_err(|e| format!("pattern `{name}`: {e}"))?;
            patterns.push((name, compiled));
        }
        let pattern_labels = patterns
            .iter()
            .map(|(n, _)| format!("pattern {n}"))
            .collect();
        let placeholders: Vec<&str> = secrets
            .iter()
            .map(|s| s.placeholder.as_str())
            .filter(|p| !p.is_empty())
            .collect();
        let placeholders = (!placeholders.is_empty())
            .then(|| AhoCorasick::new(&placeholders).expect("literal needles always build"));
        let mut s = Scanner::literals(secrets);
        s.patterns = patterns;
        s.pattern_labels = pattern_labels;
        s.placeholders = placeholders;
        Ok(s)
    }

    fn literals(secrets: &[Held]) -> Scanner {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut labels = Vec::new();
        let mut host_needles: Vec<Vec<u8>> = Vec::new();
        let mut host_labels = Vec::new();
        for s in secrets {
            let v = s.value.as_bytes();
            let mut add = |n: Vec<u8>, how: &str| {
                if !n.is_empty() {
                    needles.push(n);
                    labels.push(format!("secret {} ({how})", s.name));
                }
            };
            add(v.to_vec(), "exact");
            if v.len() >= MIN_ENCODED_LEN {
                for (engine, name) in [
                    (&base64::engine::general_purpose::STANDARD, "base64"),
                    (&base64::engine::general_purpose::URL_SAFE, "base64url"),
                ] {
                    for k in 0..3 {
                        add(aligned_base64(engine, v, k), name);
                    }
                }
                add(hex::encode(v).into_bytes(), "hex");
                add(hex::encode_upper(v).into_bytes(), "hex");
                add(percent_all(v, true), "url-encoded");
                add(percent_all(v, false), "url-encoded");
            }
            let mut addh = |n: Vec<u8>, how: &str| {
                host_needles.push(n);
                host_labels.push(format!("secret {} ({how}) in a host name", s.name));
            };
            addh(v.to_ascii_lowercase(), "exact");
            if v.len() >= MIN_ENCODED_LEN {
                addh(hex::encode(v).into_bytes(), "hex");
            }
        }
        let build = |n: &[Vec<u8>], ci: bool| {
            (!n.is_empty()).then(|| {
                AhoCorasick::builder()
                    .ascii_case_insensitive(ci)
                    .build(n)
                    .expect("literal needles always build")
            })
        };
        Scanner {
            exact: build(&needles, false),
            patterns: Vec::new(),
            pattern_labels: Vec::new(),
            placeholders: None,
            hosts: build(&host_needles, true),
            labels,
            host_labels,
        }
    }

    /// The first secret found in `bytes`, as a label.
    pub fn find(&self, bytes: &[u8]) -> Option<&str> {
        if let Some(m) = self.exact.as_ref().and_then(|ac| ac.find(bytes)) {
            return Some(self.labels[m.pattern().as_usize()].as_str());
        }
        self.find_pattern(bytes)
    }

    /// The first secret pattern matching `bytes` outside the run's own
    /// placeholders.
    fn find_pattern(&self, bytes: &[u8]) -> Option<&str> {
        let mut covered: Option<Vec<(usize, usize)>> = None;
        for (i, (_, re)) in self.patterns.iter().enumerate() {
            for m in re.find_iter(bytes) {
                let spans = covered.get_or_insert_with(|| {
                    self.placeholders
                        .as_ref()
                        .map(|ac| {
                            ac.find_overlapping_iter(bytes)
                                .map(|p| (p.start(), p.end()))
                                .collect()
                        })
                        .unwrap_or_default()
                });
                if !spans.iter().any(|&(a, b)| a <= m.start() && m.end() <= b) {
                    return Some(self.pattern_labels[i].as_str());
                }
            }
        }
        None
    }

    /// `find` on the bytes and on their percent-decoding.
    pub fn find_text(&self, bytes: &[u8]) -> Option<&str> {
        self.find(bytes).or_else(|| {
            if bytes.contains(&b'%') || bytes.contains(&b'+') {
                self.find(&percent_decode(bytes))
            } else {
                None
            }
        })
    }

    /// A secret in a host name (any case).
    pub fn find_host(&self, host: &str) -> Option<&str> {
        let ac = self.hosts.as_ref()?;
        ac.find(host.as_bytes())
            .map(|m| self.host_labels[m.pattern().as_usize()].as_str())
    }

    /// A request head: target URI and every header value.
    pub fn find_head(&self, uri: &str, headers: &hyper::HeaderMap) -> Option<String> {
        if let Some(l) = self.find_text(uri.as_bytes()) {
            return Some(format!("{l} in the URL"));
        }
        for (name, value) in headers {
            if let Some(l) = self.find_text(value.as_bytes()) {
                return Some(format!("{l} in header {name}"));
            }
        }
        None
    }

    /// A request body, raw and decoded per `content_encoding`.
    pub fn find_body(&self, body: &[u8], content_encoding: Option<&str>) -> Option<String> {
        if let Some(l) = self.find_text(body) {
            return Some(format!("{l} in the body"));
        }
        let decoded = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
            Some(e) if e == "gzip" || e == "x-gzip" => {
                read_bounded(flate2::read::MultiGzDecoder::new(body))
            }
            Some(e) if e == "deflate" => {
                // Either zlib-wrapped (as the RFC says) or raw (as some send).
                let z = read_bounded(flate2::read::ZlibDecoder::new(body));
                if z.is_empty() {
                    read_bounded(flate2::read::DeflateDecoder::new(body))
                } else {
                    z
                }
            }
            _ => return None,
        };
        self.find_text(&decoded)
            .map(|l| format!("{l} in the decoded body"))
    }
}

fn read_bounded(r: impl std::io::Read) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    // A truncated or corrupt stream still yields what decoded so far.
    let _ = r.take(MAX_DECODED).read_to_end(&mut out);
    out
}

/// The base64 characters determined by `v` alone when it starts `k` bytes
/// into an encoded stream.
fn aligned_base64(engine: &base64::engine::GeneralPurpose, v: &[u8], k: usize) -> Vec<u8> {
    let mut buf = vec![0u8; k];
    buf.extend_from_slice(v);
    let enc = engine.encode(&buf).into_bytes();
    let start = (8 * k).div_ceil(6);
    let end = (8 * (k + v.len())) / 6;
    enc.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Every byte percent-encoded.
fn percent_all(v: &[u8], upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 3);
    for b in v {
        out.push(b'%');
        let h = if upper {
            format!("{b:02X}")
        } else {
            format!("{b:02x}")
        };
        out.extend_from_slice(h.as_bytes());
    }
    out
}

/// `%XX` → byte, `+` → space; anything malformed stays as it is.
pub fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if i + 2 < v.len() => match hex::decode(&v[i + 1..i + 3]) {
                Ok(b) => {
                    out.push(b[0]);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::secrets::HeaderKind;
    use super::*;

    fn scanner(v: &str) -> Scanner {
        Scanner::new(&[Held {
            name: "CANARY".into(),
            value: v.into(),
            placeholder: "x".repeat(v.len()),
            hosts: vec![],
            header: HeaderKind::Bearer,
        }])
    }

    #[test]
    fn finds_every_encoding_and_names_no_value() {
        let v = "canary-Secret-0123456789";
        let s = scanner(v);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (i, sample) in [
            format!("q={v}"),
            b64.encode(format!("user:{v}")),
            b64.encode(format!("ab{v}")),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a{v}zz")),
            hex::encode(v),
            hex::encode_upper(format!("x{v}")),
            v.bytes().map(|b| format!("%{b:02x}")).collect::<String>(),
            v.replace('-', "%2D"),
        ]
        .iter()
        .enumerate()
        {
            let found = s.find_text(sample.as_bytes());
            assert!(found.is_some(), "sample {i} not caught: {sample}");
            assert!(!found.unwrap().contains(v));
        }
        assert_eq!(s.find_text(b"nothing to see here"), None);
        assert!(
            s.find_host(&format!("{}.evil.example.com", v.to_lowercase()))
                .is_some()
        );
        assert!(
            s.find_host(&format!("{}.example.com", hex::encode(v)))
                .is_some()
        );
    }

    #[test]
    fn finds_in_gzip_and_deflate_bodies() {
        use std::io::Write as _;
        let v = "canary-Secret-0123456789";
        let s = scanner(v);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(format!("{{\"k\":\"{v}\"}}").as_bytes())
            .unwrap();
        let gz = gz.finish().unwrap();
        assert!(s.find_body(&gz, None).is_none());
        assert!(s.find_body(&gz, Some("gzip")).is_some());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(v.as_bytes()).unwrap();
        assert!(s.find_body(&z.finish().unwrap(), Some("deflate")).is_some());
    }

    #[test]
    fn default_patterns_match_provider_keys_but_not_placeholders() {
        let ph = "ghp_PlaceholderXYZ0123456789abcdefghijklm";
        let s = Scanner::new(&[Held {
            name: "GH".into(),
            value: "ghp_RealValueXYZ0123456789abcdefghijklmn".into(),
            placeholder: ph.into(),
            hosts: vec![],
            header: HeaderKind::Bearer,
        }]);
        for (sample, name) in [
            (
                "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
                "Anthropic API key",
            ),
            ("x=ghs_abcdefghijklmnopqrstuvwxyz0123456789", "GitHub token"),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "GitHub fine-grained token",
            ),
            ("AKIAQWERTYUIOPASDFGH", "AWS access key ID"),
            ("xoxb-1234567890-abcdef", "Slack token"),
            ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
        ] {
            let found = s.find_text(sample.as_bytes());
            assert_eq!(found, Some(format!("pattern {name}").as_str()), "{sample}");
        }
        assert_eq!(s.find_text(format!("a={ph}&b={ph}").as_bytes()), None);
        // A placeholder next to a real-shaped key does not hide the key.
        let other = "ghp_OtherXYZ0123456789abcdefghijklmnopqr";
        assert!(s.find_text(format!("{ph} {other}").as_bytes()).is_some());
        assert!(Scanner::with_patterns(&[], &[("bad".into(), "(".into())]).is_err());
    }
}
