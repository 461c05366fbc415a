//! Names under a wildcard entry that look like data, refused before any
//! lookup: a DNS query is itself a way out (the name reaches the zone's
//! authoritative server), so `<encoded secret>.allowed.example.com` must not
//! be resolved.
//!
//! Limits on each label left of the wildcard's suffix (documented in
//! README, "Secrets"): at most [`MAX_LABEL`] characters; a label of
//! [`ENTROPY_MIN_LEN`] characters or more must have a Shannon entropy of at
//! most [`MAX_ENTROPY`] bits per character; and the part left of the suffix
//! at most [`MAX_HEAD`] characters. Names an exact entry allows are not
//! checked (the policy named them).

use crate::host::Pattern;

pub const MAX_LABEL: usize = 40;
pub const ENTROPY_MIN_LEN: usize = 20;
pub const MAX_ENTROPY: f64 = 4.0;
pub const MAX_HEAD: usize = 100;

/// Why `host` (normalized, allowed) looks like encoded data, if it does.
pub fn suspicious(host: &str, allow: &[Pattern]) -> Option<String> {
    if allow
        .iter()
        .any(|p| matches!(p, Pattern::Exact(h) if h == host))
    {
        return None;
    }
    // The longest matching suffix leaves the least to check; any wildcard
    // that matches is an entry the agent can put data under.
    let head = allow
        .iter()
        .filter_map(|p| match p {
            Pattern::Subdomains(s) if p.matches(host) => Some(&host[..host.len() - s.len() - 1]),
            _ => None,
        })
        .min_by_key(|h| h.len())?;
    if head.len() > MAX_HEAD {
        return Some(format!(
            "name under a wildcard entry is {} characters before the entry's suffix (limit {MAX_HEAD}): looks like encoded data",
            head.len()
        ));
    }
    for label in head.split('.') {
        if label.len() > MAX_LABEL {
            return Some(format!(
                "a label under a wildcard entry is {} characters (limit {MAX_LABEL}): looks like encoded data",
                label.len()
            ));
        }
        if label.len() >= ENTROPY_MIN_LEN {
            let e = entropy(label);
            if e > MAX_ENTROPY {
                return Some(format!(
                    "a label under a wildcard entry has entropy {e:.2} bits/char (limit {MAX_ENTROPY} for {ENTROPY_MIN_LEN}+ characters): looks like encoded data"
                ));
            }
        }
    }
    None
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<Pattern> {
        vec![
            Pattern::parse("*.example.com").unwrap(),
            Pattern::parse("exact.example.com").unwrap(),
        ]
    }

    #[test]
    fn ordinary_names_pass_and_data_does_not() {
        let a = allow();
        assert_eq!(suspicious("api.example.com", &a), None);
        assert_eq!(suspicious("d1234abcd5678.cdn.example.com", &a), None);
        assert_eq!(
            suspicious("my-company-artifacts-prod.example.com", &a),
            None
        );
        assert!(suspicious(&format!("{}.example.com", "a".repeat(41)), &a).is_some());
        assert!(suspicious("q8zk3pxv7wmn2rtb5yhc9dfg.example.com", &a).is_some());
        let long = format!("{}.example.com", ["abcdefghij"; 11].join("."));
        assert!(suspicious(&long, &a).is_some());
    }
}
