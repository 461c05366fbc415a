//! Debian version numbers (`[epoch:]upstream[-revision]`) and their order,
//! as dpkg defines it (deb-version(7)), plus the relations of `Depends`
//! fields (`<<`, `<=`, `=`, `>=`, `>>`).
//!
//! Invariant: [`compare`] is a total order that agrees with
//! `dpkg --compare-versions` on every well-formed version; `~` sorts before
//! everything, even the end of the string.

use std::cmp::Ordering;

/// Compare two version strings the way dpkg does.
pub(crate) fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// Epoch (0 when absent), upstream version, revision ("" when absent).
fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// Weight of a non-digit byte: `~` first, then the end of the string,
/// then letters, then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, byte by byte.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        // Digit run, numerically (leading zeros ignored, any length).
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let da = trim_zeros(&a[si..i]);
        let db = trim_zeros(&b[sj..j]);
        let c = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n..]
}

/// A version relation from a `Depends`-style field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rel {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Rel {
    pub(crate) fn parse(s: &str) -> Option<Rel> {
        Some(match s {
            "<<" => Rel::Lt,
            "<=" | "<" => Rel::Le,
            "=" => Rel::Eq,
            ">=" | ">" => Rel::Ge,
            ">>" => Rel::Gt,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rel::Lt => "<<",
            Rel::Le => "<=",
            Rel::Eq => "=",
            Rel::Ge => ">=",
            Rel::Gt => ">>",
        }
    }

    /// Does `have` satisfy `self want`?
    pub(crate) fn holds(self, have: &str, want: &str) -> bool {
        let c = compare(have, want);
        match self {
            Rel::Lt => c == Ordering::Less,
            Rel::Le => c != Ordering::Greater,
            Rel::Eq => c == Ordering::Equal,
            Rel::Ge => c != Ordering::Less,
            Rel::Gt => c == Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_like_dpkg() {
        // Cases from dpkg's own test suite and deb-version(7).
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0-1", "1.0-1+b1", Less),
            ("1:0.9", "2.0", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less),
            ("001", "1", Equal),
            ("2.39.5-0+deb12u2", "2.39.2-1.1", Greater),
            ("1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u1", Greater),
            ("7.88.1-10+deb12u12", "7.88.1-10+deb12u8", Greater),
            ("1.2.3-1", "1.2.3-1~bpo12+1", Greater),
            ("a", "b", Less),
            ("1-2-3", "1-2-4", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn relations_hold_as_written() {
        assert!(Rel::Ge.holds("2.36-9", "2.34"));
        assert!(!Rel::Lt.holds("2.36", "2.36"));
        assert!(Rel::Le.holds("2.36", "2.36"));
        assert!(Rel::Eq.holds("0:1.0", "1.0"));
        assert!(Rel::Gt.holds("1.0+b1", "1.0"));
        assert_eq!(Rel::parse(">>"), Some(Rel::Gt));
        assert_eq!(Rel::parse("=>"), None);
    }

    proptest::proptest! {
        #[test]
        fn total_order(a in "[0-9]{0,2}:?[0-9a-z.+~]{1,6}-?[0-9a-z.+~]{0,4}",
                       b in "[0-9]{0,2}:?[0-9a-z.+~]{1,6}-?[0-9a-z.+~]{0,4}") {
            proptest::prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
            proptest::prop_assert_eq!(compare(&a, &a), Equal);
        }
    }
}
