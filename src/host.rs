//! Hostnames and allowlist patterns: one normalization and one matcher,
//! shared by manifest validation (at `lock`) and the egress proxy (per request).
//!
//! Invariants:
//! - A normalized host is lowercase ASCII (IDNA `xn--` form), has no trailing
//!   dot, and is a DNS name: never an IP literal in any notation, never with a
//!   scheme, port, path or userinfo.
//! - A pattern is either a normalized host (exact match) or `*.` followed by a
//!   normalized host, which matches strict subdomains only (`*.example.com`
//!   matches `a.example.com` and `a.b.example.com`, not `example.com`).
//!
//! Because the same code normalizes the allowlist and the request, a lookalike
//! (`EXAMPLE.com.`, `ex%61mple.com`, a homoglyph) cannot match differently in
//! the two places.

use std::fmt;

/// Why a string is not an acceptable hostname or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("is empty")]
    Empty,
    #[error("has a scheme (`://`); write the bare hostname, e.g. `example.com`")]
    Scheme,
    #[error("has a path, query or fragment; write the bare hostname")]
    Path,
    #[error("has a port; write the bare hostname (ports are fixed by policy: 443, 80, 22 for ssh)")]
    Port,
    #[error("has userinfo (`@`); write the bare hostname")]
    Userinfo,
    #[error("is an IP address; the allowlist takes hostnames only")]
    IpLiteral,
    #[error("uses `*` other than as a whole leading label (`*.example.com`)")]
    Wildcard,
    #[error("contains whitespace, control characters or percent-encoding")]
    BadCharacter,
    #[error("is not a valid DNS name ({0})")]
    Invalid(String),
}

/// An allowlist entry after normalization.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    Exact(String),
    /// The suffix without the leading `*.`.
    Subdomains(String),
}

impl Pattern {
    pub fn parse(input: &str) -> Result<Pattern, HostError> {
        match input.strip_prefix("*.") {
            Some(rest) => Ok(Pattern::Subdomains(normalize(rest)?)),
            None => Ok(Pattern::Exact(normalize(input)?)),
        }
    }

    /// `host` must already be normalized (see [`normalize`]).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Pattern::Exact(h) => h == host,
            Pattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(h) => f.write_str(h),
            Pattern::Subdomains(s) => write!(f, "*.{s}"),
        }
    }
}

/// Normalize a concrete hostname: lowercase, IDNA to ASCII, one trailing dot
/// removed; reject everything that is not a plain DNS name.
pub fn normalize(input: &str) -> Result<String, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.contains("://") {
        return Err(HostError::Scheme);
    }
    if input
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '%')
    {
        return Err(HostError::BadCharacter);
    }
    if input.contains('@') {
        return Err(HostError::Userinfo);
    }
    if input.contains(['/', '?', '#', '\\']) {
        return Err(HostError::Path);
    }
    if input.starts_with('[') || input.matches(':').count() > 1 {
        return Err(HostError::IpLiteral);
    }
    if input.contains(':') {
        return Err(HostError::Port);
    }
    if input.contains('*') {
        return Err(HostError::Wildcard);
    }
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() || trimmed.ends_with('.') || trimmed.starts_with('.') {
        return Err(HostError::Invalid("empty label".into()));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed)
        .map_err(|e| HostError::Invalid(format!("IDNA: {e:?}")))?;
    if ascii.is_empty() {
        return Err(HostError::Empty);
    }
    if looks_like_ipv4(&ascii) {
        return Err(HostError::IpLiteral);
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostError::Invalid(format!("label `{label}` length")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Invalid(format!(
                "label `{label}` starts or ends with `-`"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(HostError::Invalid(format!(
                "label `{label}` has characters outside a-z 0-9 -"
            )));
        }
    }
    if ascii.len() > 253 {
        return Err(HostError::Invalid("longer than 253 characters".into()));
    }
    Ok(ascii)
}

/// True when a URL parser would read `host` as an IPv4 address: the WHATWG
/// rule is that a numeric last label (decimal, `0x` hex or leading-zero octal)
/// makes the whole host an IPv4 literal, so `2130706433`, `0x7f.1` and
/// `0177.0.0.1` all count.
fn looks_like_ipv4(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = |s: &str| {
        let s = s.strip_prefix("0x").unwrap_or(s);
        s.is_empty() || s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit()) || (last.starts_with("0x") && numeric(last)))
}

/// Sorted, de-duplicated patterns as strings: the canonical form stored in
/// lockfiles and image configs.
pub fn canonical_list<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Vec<String> {
    let mut v: Vec<String> = patterns.into_iter().map(|p| p.to_string()).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_trailing_dot_and_idna() {
        assert_eq!(normalize("GitHub.COM.").unwrap(), "github.com");
        assert_eq!(
            normalize("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn rejects_non_hostnames() {
        for (bad, want) in [
            ("", HostError::Empty),
            ("https://github.com", HostError::Scheme),
            ("github.com/path", HostError::Path),
            ("github.com:443", HostError::Port),
            ("user@github.com", HostError::Userinfo),
            ("127.0.0.1", HostError::IpLiteral),
            ("2130706433", HostError::IpLiteral),
            ("0x7f000001", HostError::IpLiteral),
            ("0177.0.0.1", HostError::IpLiteral),
            ("[::1]", HostError::IpLiteral),
            ("::1", HostError::IpLiteral),
            ("a*.example.com", HostError::Wildcard),
            ("git hub.com", HostError::BadCharacter),
            ("ex%61mple.com", HostError::BadCharacter),
        ] {
            assert_eq!(normalize(bad), Err(want), "{bad:?}");
        }
        for bad in ["-a.com", "a..com", "a.com..", ".a.com", "under_score.com"] {
            assert!(
                matches!(normalize(bad), Err(HostError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wildcard_matches_strict_subdomains_only() {
        let p = Pattern::parse("*.Example.com").unwrap();
        assert_eq!(p.to_string(), "*.example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("evilexample.com"));
        assert!(!p.matches("example.com.evil.test"));
        assert!(Pattern::parse("*.*.example.com").is_err());
        assert!(Pattern::parse("*").is_err());
    }

    #[test]
    fn exact_matches_only_itself() {
        let p = Pattern::parse("github.com").unwrap();
        assert!(p.matches("github.com"));
        assert!(!p.matches("api.github.com"));
        assert!(!p.matches("github.com.evil.test"));
    }
}
