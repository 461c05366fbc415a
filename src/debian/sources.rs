//! Which archives to resolve against: apt's own configuration (deb822
//! `*.sources` files and one-line `sources.list` files), or one named by
//! the recipe or by `BOTTLE_APT_SOURCES`.
//!
//! Invariants: no archive host is ever built in; every URI, suite,
//! component and keyring comes from a configuration file or the recipe.
//! Only `deb` (binary) entries are used; `deb-src` is ignored. Entries keep
//! the order apt reads them in (sources.list, then sources.list.d sorted).

use std::path::{Path, PathBuf};

use super::DebError;

/// Env var naming a sources file (deb822 or one-line) that replaces the
/// host's apt configuration; mostly for tests and mirrors.
pub(crate) const SOURCES_ENV: &str = "BOTTLE_APT_SOURCES";

/// One `deb` source: an archive base URI and one suite of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Without a trailing `/`.
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// Keyring files that may sign this suite's `InRelease`.
    pub signed_by: Vec<PathBuf>,
    /// Where this entry came from, for messages.
    pub origin: String,
}

/// The sources to use: `$BOTTLE_APT_SOURCES` if set, else the host's apt
/// configuration under `/etc/apt`.
pub(crate) fn host_sources() -> Result<Vec<Source>, DebError> {
    if let Some(p) = std::env::var_os(SOURCES_ENV) {
        return read_file(Path::new(&p));
    }
    read_apt_dir(Path::new("/etc/apt"))
}

/// All `deb` entries of an apt configuration folder.
pub(crate) fn read_apt_dir(etc: &Path) -> Result<Vec<Source>, DebError> {
    let mut out = Vec::new();
    let list = etc.join("sources.list");
    if list.is_file() {
        out.extend(read_file(&list)?);
    }
    let d = etc.join("sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&d) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        files.sort();
        for f in files {
            out.extend(read_file(&f)?);
        }
    }
    if out.is_empty() {
        return Err(DebError::Sources {
            file: etc.display().to_string(),
            problem: "no `deb` source is configured".into(),
        });
    }
    Ok(out)
}

/// Parse one file: deb822 when it ends in `.sources` or has `Types:`
/// fields, else one-line format.
pub(crate) fn read_file(path: &Path) -> Result<Vec<Source>, DebError> {
    let text = std::fs::read_to_string(path).map_err(|e| DebError::Sources {
        file: path.display().to_string(),
        problem: format!("cannot read: {e}"),
    })?;
    let origin = path.display().to_string();
    let deb822 = path.extension().is_some_and(|e| e == "sources")
        || text.lines().any(|l| l.starts_with("Types:"));
    if deb822 {
        parse_deb822(&text, &origin)
    } else {
        parse_one_line(&text, &origin)
    }
}

fn bad(origin: &str, problem: String) -> DebError {
    DebError::Sources {
        file: origin.to_string(),
        problem,
    }
}

/// Keyrings apt falls back to when a source names none.
fn default_keyrings() -> Vec<PathBuf> {
    let mut out = vec![];
    let main = Path::new("/etc/apt/trusted.gpg");
    if main.is_file() {
        out.push(main.to_path_buf());
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/trusted.gpg.d") {
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        out.extend(v);
    }
    out
}

fn keyrings(value: Option<&str>, origin: &str) -> Result<Vec<PathBuf>, DebError> {
    let Some(v) = value else {
        return Ok(default_keyrings());
    };
    let mut out = Vec::new();
    for k in v.split([',', ' ']).filter(|k| !k.is_empty()) {
        if !k.starts_with('/') {
            return Err(bad(
                origin,
                format!(
                    "Signed-By `{k}` is not a keyring path; bottle reads keyring files only (an absolute path)"
                ),
            ));
        }
        out.push(PathBuf::from(k));
    }
    Ok(out)
}

fn expand(
    uris: &[&str],
    suites: &[&str],
    comps: &[String],
    signed_by: &[PathBuf],
    origin: &str,
) -> Vec<Source> {
    let mut out = Vec::new();
    for u in uris {
        for s in suites {
            out.push(Source {
                uri: u.trim_end_matches('/').to_string(),
                suite: (*s).to_string(),
                components: comps.to_vec(),
                signed_by: signed_by.to_vec(),
                origin: origin.to_string(),
            });
        }
    }
    out
}

pub(crate) fn parse_deb822(text: &str, origin: &str) -> Result<Vec<Source>, DebError> {
    let mut out = Vec::new();
    for para in super::index::paragraphs(text) {
        let get = |k: &str| {
            para.iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        if get("Enabled").is_some_and(|v| v.trim() == "no") {
            continue;
        }
        let types = get("Types").unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let words = |k: &str| get(k).map(|v| v.split_whitespace().collect::<Vec<_>>());
        let uris = words("URIs").ok_or_else(|| bad(origin, "a stanza has no `URIs`".into()))?;
        let suites =
            words("Suites").ok_or_else(|| bad(origin, "a stanza has no `Suites`".into()))?;
        let comps: Vec<String> = words("Components")
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        let signed = get("Signed-By").map(str::trim);
        if signed.is_some_and(|s| s.contains("BEGIN PGP")) {
            return Err(bad(
                origin,
                "an inline Signed-By key block is not supported; put the key in a keyring file and name its path".into(),
            ));
        }
        let signed_by = keyrings(signed, origin)?;
        out.extend(expand(&uris, &suites, &comps, &signed_by, origin));
    }
    Ok(out)
}

pub(crate) fn parse_one_line(text: &str, origin: &str) -> Result<Vec<Source>, DebError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim();
        let (opts, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (o, r) = r
                    .split_once(']')
                    .ok_or_else(|| bad(origin, format!("line {}: `[` without `]`", n + 1)))?;
                (o, r.trim())
            }
            None => ("", rest),
        };
        let mut signed = None;
        for o in opts.split_whitespace() {
            if let Some(v) = o.strip_prefix("signed-by=") {
                signed = Some(v);
            }
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() < 2 {
            return Err(bad(
                origin,
                format!("line {}: expected `deb URI SUITE [COMPONENT…]`", n + 1),
            ));
        }
        let comps: Vec<String> = words[2..].iter().map(|s| (*s).to_string()).collect();
        let signed_by = keyrings(signed, origin)?;
        let origin = format!("{origin}:{}", n + 1);
        out.extend(expand(
            &words[..1],
            &words[1..2],
            &comps,
            &signed_by,
            &origin,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_expands_uris_and_suites_and_skips_disabled_and_src() {
        let text = "Types: deb deb-src\nURIs: http://mirror.test/debian/\nSuites: stable stable-updates\n\
                    Components: main contrib\nSigned-By: /k/a.gpg\n\n\
                    Types: deb-src\nURIs: http://mirror.test/src\nSuites: stable\nComponents: main\n\n\
                    Types: deb\nEnabled: no\nURIs: http://off.test\nSuites: x\nComponents: main\n";
        let s = parse_deb822(text, "t.sources").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://mirror.test/debian");
        assert_eq!(s[1].suite, "stable-updates");
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[0].signed_by, [PathBuf::from("/k/a.gpg")]);
    }

    #[test]
    fn one_line_reads_options_and_refuses_garbage() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k/b.gpg] http://m.test/d bookworm main\ndeb-src http://m.test/d bookworm main\n";
        let s = parse_one_line(text, "sources.list").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].suite, "bookworm");
        assert_eq!(s[0].signed_by, [PathBuf::from("/k/b.gpg")]);
        assert_eq!(s[0].origin, "sources.list:2");
        let e = parse_one_line("deb http://m.test\n", "x.list").unwrap_err();
        assert!(e.to_string().contains("x.list"), "{e}");
    }

    #[test]
    fn host_config_names_a_keyring_that_exists() {
        // The machine this runs on is configured like the one the issue
        // describes: at least one deb source with a readable keyring.
        let s = read_apt_dir(Path::new("/etc/apt")).unwrap();
        assert!(!s.is_empty());
        assert!(s.iter().all(|s| s.signed_by.iter().all(|k| k.is_file())));
    }
}
