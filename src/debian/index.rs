//! Control-file paragraphs (deb822) and the `Packages` index built from
//! them, plus the dependency fields of one package.
//!
//! Invariants: a paragraph keeps its fields in file order with
//! continuation lines joined by `\n` (so `/var/lib/dpkg/status` can copy
//! them back verbatim); a package without `Package`, `Version`,
//! `Architecture`, `Filename`, `Size` or `SHA256` is an error naming the
//! index, never silently skipped.

use super::DebError;
use super::version::Rel;

/// One paragraph: `(field, value)` in file order.
pub(crate) type Paragraph = Vec<(String, String)>;

/// Split deb822 text into paragraphs; `#` comment lines are dropped.
pub(crate) fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur: Paragraph = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(crate) fn field<'a>(p: &'a Paragraph, name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One alternative of a dependency: `name [(rel version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dep {
    pub name: String,
    pub rel: Option<(Rel, String)>,
}

impl std::fmt::Display for Dep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rel {
            Some((r, v)) => write!(f, "{} ({} {v})", self.name, r.as_str()),
            None => write!(f, "{}", self.name),
        }
    }
}

/// A relation field: groups of alternatives (`a | b, c`).
pub(crate) fn parse_relations(s: &str) -> Result<Vec<Vec<Dep>>, String> {
    let mut out = Vec::new();
    for group in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            // Architecture lists do not occur in binary indexes; drop one
            // if it does rather than misparse.
            let alt = alt.split('[').next().unwrap_or("").trim();
            let (name, rel) = match alt.split_once('(') {
                Some((n, r)) => {
                    let r = r.trim_end().trim_end_matches(')').trim();
                    let op_len = r
                        .find(|c: char| !matches!(c, '<' | '>' | '='))
                        .unwrap_or(r.len());
                    let rel = Rel::parse(&r[..op_len])
                        .ok_or_else(|| format!("`{alt}`: unknown relation"))?;
                    let v = r[op_len..].trim();
                    if v.is_empty() {
                        return Err(format!("`{alt}`: relation without a version"));
                    }
                    (n.trim(), Some((rel, v.to_string())))
                }
                None => (alt, None),
            };
            let name = name
                .strip_suffix(":any")
                .or_else(|| name.strip_suffix(":native"))
                .unwrap_or(name);
            if name.is_empty() {
                return Err(format!("`{group}`: empty package name"));
            }
            alts.push(Dep {
                name: name.to_string(),
                rel,
            });
        }
        out.push(alts);
    }
    Ok(out)
}

/// One binary package of an index.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub essential: bool,
    pub depends: Vec<Vec<Dep>>,
    pub conflicts: Vec<Dep>,
    /// `(virtual name, provided version)`.
    pub provides: Vec<(String, Option<String>)>,
    /// The suite whose index listed it.
    pub suite: String,
    /// The index that listed it, for messages.
    pub index: String,
}

/// Every package of a `Packages` text for `arch` (or `all`).
pub(crate) fn parse_packages(
    text: &str,
    arch: &str,
    suite: &str,
    origin: &str,
) -> Result<Vec<Package>, DebError> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        let a = field(&p, "Architecture").unwrap_or("");
        if a != arch && a != "all" {
            continue;
        }
        out.push(package(p, suite, origin)?);
    }
    Ok(out)
}

fn package(p: Paragraph, suite: &str, origin: &str) -> Result<Package, DebError> {
    let name = field(&p, "Package").unwrap_or("").to_string();
    let bad = |problem: String| DebError::Index {
        file: origin.to_string(),
        problem: format!("package `{name}`: {problem}"),
    };
    let need = |k: &str| {
        field(&p, k)
            .map(str::to_string)
            .ok_or_else(|| bad(format!("no `{k}` field")))
    };
    let rels = |k: &str| parse_relations(field(&p, k).unwrap_or("")).map_err(&bad);
    let mut depends = rels("Pre-Depends")?;
    depends.extend(rels("Depends")?);
    let mut conflicts: Vec<Dep> = rels("Conflicts")?.into_iter().flatten().collect();
    conflicts.extend(rels("Breaks")?.into_iter().flatten());
    let provides = rels("Provides")?
        .into_iter()
        .flatten()
        .map(|d| (d.name, d.rel.map(|(_, v)| v)))
        .collect();
    let size = need("Size")?
        .parse()
        .map_err(|_| bad("`Size` is not a number".into()))?;
    let sha256 = need("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("`SHA256` is not 64 hex digits".into()));
    }
    Ok(Package {
        version: need("Version")?,
        arch: need("Architecture")?,
        filename: need("Filename")?,
        size,
        sha256: sha256.to_ascii_lowercase(),
        essential: field(&p, "Essential") == Some("yes"),
        depends,
        conflicts,
        provides,
        suite: suite.to_string(),
        index: origin.to_string(),
        name: need("Package")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_with_alternatives_versions_and_qualifiers() {
        let r = parse_relations("libc6 (>= 2.34), perl:any | awk, foo (<< 1:2~) [amd64]").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0][0].rel, Some((Rel::Ge, "2.34".into())));
        assert_eq!(r[1][0].name, "perl");
        assert_eq!(r[1][1].name, "awk");
        assert_eq!(r[2][0].to_string(), "foo (<< 1:2~)");
        assert!(parse_relations("a (~~ 1)").is_err());
        assert!(parse_relations("a (>=)").is_err());
    }

    #[test]
    fn packages_keep_fields_and_refuse_missing_hash() {
        let text = "Package: a\nVersion: 1\nArchitecture: amd64\nPre-Depends: p\nDepends: b (>= 2) | c\n\
                    Provides: v (= 1)\nFilename: pool/a.deb\nSize: 3\nSHA256: {h}\nDescription: x\n more\n\n\
                    Package: z\nVersion: 1\nArchitecture: arm64\n";
        let text = text.replace("{h}", &"ab".repeat(32));
        let p = parse_packages(&text, "amd64", "s", "Packages").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].depends[0][0].name, "p");
        assert_eq!(p[0].depends[1][1].name, "c");
        assert_eq!(p[0].provides, [("v".to_string(), Some("1".to_string()))]);
        let para = &paragraphs(&text)[0];
        assert_eq!(field(para, "Description"), Some("x\n more"));
        let broken = text.replace("SHA256", "MD5sum");
        let e = parse_packages(&broken, "amd64", "s", "dists/s/main/Packages").unwrap_err();
        assert!(e.to_string().contains("dists/s/main/Packages"), "{e}");
        assert!(e.to_string().contains("SHA256"), "{e}");
    }
}
