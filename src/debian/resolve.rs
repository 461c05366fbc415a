//! Dependency resolution over the verified indexes: the `Pre-Depends` and
//! `Depends` closure of the requested packages for one architecture.
//!
//! Rules, each deterministic (same indexes and request → same set):
//! - the candidate for a name is its highest version among the indexes
//!   (ties: the source listed first), unless the request pins `name=version`;
//! - a dependency group already satisfied by a chosen package (by name and
//!   version, or by `Provides`) adds nothing; otherwise its first
//!   alternative that has a candidate is taken; a virtual name with no real
//!   package resolves to its providers sorted by name;
//! - `Essential: yes` packages are added only when the recipe asks;
//! - one version per name: a dependency that needs another version of a
//!   chosen package, a dependency nothing provides, or a `Conflicts`/`Breaks`
//!   between two chosen packages is an error naming the chain from the
//!   recipe to the package that asked for it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::DebError;
use super::index::{Dep, Package};
use super::version::{Rel, compare};

/// A requested package: `name` or `name=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub name: String,
    pub version: Option<String>,
}

impl Request {
    pub(crate) fn parse(s: &str) -> Request {
        match s.split_once('=') {
            Some((n, v)) => Request {
                name: n.trim().to_string(),
                version: Some(v.trim().to_string()),
            },
            None => Request {
                name: s.trim().to_string(),
                version: None,
            },
        }
    }
}

struct Universe<'a> {
    pkgs: &'a [Package],
    /// Name → indexes, best candidate first.
    by_name: HashMap<&'a str, Vec<usize>>,
    /// Virtual name → (package index, provided version).
    providers: HashMap<&'a str, Vec<(usize, Option<&'a str>)>>,
}

impl<'a> Universe<'a> {
    fn new(pkgs: &'a [Package]) -> Universe<'a> {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<&str, Vec<(usize, Option<&str>)>> = HashMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            by_name.entry(&p.name).or_default().push(i);
            for (v, ver) in &p.provides {
                providers.entry(v).or_default().push((i, ver.as_deref()));
            }
        }
        for v in by_name.values_mut() {
            // Stable sort: equal versions keep source order.
            v.sort_by(|a, b| compare(&pkgs[*b].version, &pkgs[*a].version));
        }
        for v in providers.values_mut() {
            v.sort_by(|a, b| {
                pkgs[a.0]
                    .name
                    .cmp(&pkgs[b.0].name)
                    .then_with(|| compare(&pkgs[b.0].version, &pkgs[a.0].version))
            });
        }
        Universe {
            pkgs,
            by_name,
            providers,
        }
    }

    fn holds(rel: &Option<(Rel, String)>, have: Option<&str>) -> bool {
        match (rel, have) {
            (None, _) => true,
            (Some((r, want)), Some(h)) => r.holds(h, want),
            (Some(_), None) => false,
        }
    }

    /// The package that would satisfy `d`, ignoring what is chosen.
    fn candidate(&self, d: &Dep) -> Option<usize> {
        if let Some(v) = self.by_name.get(d.name.as_str()) {
            if let Some(i) = v
                .iter()
                .find(|i| Self::holds(&d.rel, Some(&self.pkgs[**i].version)))
            {
                return Some(*i);
            }
        }
        self.providers
            .get(d.name.as_str())?
            .iter()
            .find(|(_, pv)| Self::holds(&d.rel, *pv))
            .map(|(i, _)| *i)
    }
}

struct State<'a> {
    u: Universe<'a>,
    /// Name → chosen package index.
    chosen: BTreeMap<&'a str, usize>,
    /// Name → (who asked, what it asked for).
    why: HashMap<&'a str, (Option<&'a str>, String)>,
    queue: VecDeque<usize>,
}

impl<'a> State<'a> {
    /// `recipe → a → b (>= 1)` for the package named `name`.
    fn chain(&self, name: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = Some(name.to_string());
        let mut guard = 0;
        while let Some(n) = cur {
            let Some((parent, asked)) = self.why.get(n.as_str()) else {
                parts.push(n);
                break;
            };
            parts.push(asked.clone());
            cur = parent.map(str::to_string);
            guard += 1;
            if guard > 10_000 {
                break;
            }
        }
        parts.push("recipe".into());
        parts.reverse();
        parts.join(" → ")
    }

    fn satisfied(&self, d: &Dep) -> bool {
        if let Some(i) = self.chosen.get(d.name.as_str()) {
            if Universe::holds(&d.rel, Some(&self.u.pkgs[*i].version)) {
                return true;
            }
        }
        self.u.providers.get(d.name.as_str()).is_some_and(|v| {
            v.iter().any(|(i, pv)| {
                self.chosen.get(self.u.pkgs[*i].name.as_str()) == Some(i)
                    && Universe::holds(&d.rel, *pv)
            })
        })
    }

    fn choose(&mut self, i: usize, parent: Option<&'a str>, asked: String) -> Result<(), DebError> {
        let p = &self.u.pkgs[i];
        match self.chosen.get(p.name.as_str()) {
            Some(j) if *j == i => Ok(()),
            Some(j) => {
                let have = &self.u.pkgs[*j];
                let by = parent.map_or("recipe".to_string(), |n| self.chain(n));
                Err(DebError::Conflict {
                    chain: format!("{by} → {asked}"),
                    problem: format!(
                        "needs {} {} but {} was chosen for {}",
                        p.name,
                        p.version,
                        have.version,
                        self.chain(&have.name)
                    ),
                })
            }
            None => {
                self.chosen.insert(&p.name, i);
                self.why.insert(&p.name, (parent, asked));
                self.queue.push_back(i);
                Ok(())
            }
        }
    }

    fn follow(&mut self, i: usize) -> Result<(), DebError> {
        let pkgs = self.u.pkgs;
        let p = &pkgs[i];
        for group in &p.depends {
            if group.iter().any(|d| self.satisfied(d)) {
                continue;
            }
            let text = group
                .iter()
                .map(Dep::to_string)
                .collect::<Vec<_>>()
                .join(" | ");
            match group.iter().find_map(|d| self.u.candidate(d)) {
                Some(j) => self.choose(j, Some(&p.name), text)?,
                None => {
                    return Err(DebError::Missing {
                        chain: format!("{} → {text}", self.chain(&p.name)),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_conflicts(&self) -> Result<(), DebError> {
        for (name, i) in &self.chosen {
            let p = &self.u.pkgs[*i];
            for c in &p.conflicts {
                let hit = self.chosen.iter().find(|(n, j)| {
                    *j != i
                        && (**n == c.name
                            && Universe::holds(&c.rel, Some(&self.u.pkgs[**j].version))
                            || c.rel.is_none()
                                && self.u.pkgs[**j].provides.iter().any(|(v, _)| *v == c.name))
                });
                if let Some((other, _)) = hit {
                    return Err(DebError::Conflict {
                        chain: self.chain(name),
                        problem: format!(
                            "conflicts with or breaks `{c}`, chosen for {}",
                            self.chain(other)
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The closure of `requests` over `pkgs`, sorted by name.
pub(crate) fn resolve<'a>(
    pkgs: &'a [Package],
    requests: &[Request],
    essential: bool,
) -> Result<Vec<&'a Package>, DebError> {
    let mut s = State {
        u: Universe::new(pkgs),
        chosen: BTreeMap::new(),
        why: HashMap::new(),
        queue: VecDeque::new(),
    };
    for r in requests {
        let i = requested(&s.u, r)?;
        let asked = match &r.version {
            Some(v) => format!("{}={v}", r.name),
            None => r.name.clone(),
        };
        s.choose(i, None, asked)?;
    }
    if essential {
        let mut names: Vec<&str> = pkgs
            .iter()
            .filter(|p| p.essential)
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for n in names {
            if !s.chosen.contains_key(n) {
                let i = s.u.by_name[n][0];
                s.choose(i, None, format!("{n} (Essential)"))?;
            }
        }
    }
    while let Some(i) = s.queue.pop_front() {
        s.follow(i)?;
    }
    s.check_conflicts()?;
    Ok(s.chosen.values().map(|i| &pkgs[*i]).collect())
}

fn requested(u: &Universe<'_>, r: &Request) -> Result<usize, DebError> {
    let missing = |problem: String| DebError::Request {
        name: r.name.clone(),
        problem,
    };
    let Some(cands) = u.by_name.get(r.name.as_str()) else {
        let prov = u
            .providers
            .get(r.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        return match prov {
            [(i, _)] if r.version.is_none() => Ok(*i),
            [] => Err(missing("no index of the archive lists it".into())),
            many => Err(missing(format!(
                "is virtual; name one of its providers: {}",
                many.iter()
                    .map(|(i, _)| u.pkgs[*i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    };
    match &r.version {
        None => Ok(cands[0]),
        Some(v) => cands
            .iter()
            .find(|i| compare(&u.pkgs[**i].version, v).is_eq())
            .copied()
            .ok_or_else(|| {
                missing(format!(
                    "version {v} is not in the archive (it has {})",
                    cands
                        .iter()
                        .map(|i| u.pkgs[*i].version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::index::parse_packages;

    fn universe(spec: &str) -> Vec<Package> {
        // `name version [Depends] [;Provides] [!Conflicts] [*]` per line.
        let mut text = String::new();
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(3, ' ');
            let (n, v) = (parts.next().unwrap(), parts.next().unwrap());
            let rest = parts.next().unwrap_or("");
            text.push_str(&format!(
                "Package: {n}\nVersion: {v}\nArchitecture: amd64\nFilename: pool/{n}_{v}.deb\nSize: 1\nSHA256: {}\n",
                "0".repeat(64)
            ));
            for f in rest.split(';') {
                let f = f.trim();
                if let Some(d) = f.strip_prefix("D:") {
                    text.push_str(&format!("Depends: {d}\n"));
                } else if let Some(d) = f.strip_prefix("P:") {
                    text.push_str(&format!("Provides: {d}\n"));
                } else if let Some(d) = f.strip_prefix("C:") {
                    text.push_str(&format!("Conflicts: {d}\n"));
                } else if f == "E" {
                    text.push_str("Essential: yes\n");
                }
            }
            text.push('\n');
        }
        parse_packages(&text, "amd64", "s", "test").unwrap()
    }

    fn names(v: &[&Package]) -> Vec<String> {
        v.iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect()
    }

    fn req(s: &[&str]) -> Vec<Request> {
        s.iter().map(|r| Request::parse(r)).collect()
    }

    #[test]
    fn closure_picks_highest_versions_alternatives_and_providers() {
        let u = universe(
            "app 1 D:libc (>= 2), awk | mawk, mta
             libc 1
             libc 3
             libc 2
             gawk 1 P:awk
             mawk 1 P:awk
             exim 1 P:mta
             postfix 1 P:mta
             base 1 E",
        );
        let got = resolve(&u, &req(&["app"]), false).unwrap();
        assert_eq!(
            names(&got),
            ["app=1", "exim=1", "gawk=1", "libc=3"],
            "virtual awk → first provider by name; mta → first provider"
        );
        let with_e = resolve(&u, &req(&["app"]), true).unwrap();
        assert!(names(&with_e).contains(&"base=1".to_string()));
        let pinned = resolve(&u, &req(&["libc=2"]), false).unwrap();
        assert_eq!(names(&pinned), ["libc=2"]);
    }

    #[test]
    fn already_chosen_provider_satisfies_later_groups() {
        let u = universe(
            "a 1 D:mawk, awk
             gawk 1 P:awk
             mawk 1 P:awk",
        );
        let got = resolve(&u, &req(&["a"]), false).unwrap();
        assert_eq!(names(&got), ["a=1", "mawk=1"]);
    }

    #[test]
    fn missing_dependency_names_the_chain() {
        let u = universe(
            "git 1 D:curl
             curl 1 D:libssl (>= 3)
             libssl 1",
        );
        let e = resolve(&u, &req(&["git"]), false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("recipe → git → curl → libssl (>= 3)"), "{msg}");
        let e = resolve(&u, &req(&["nope"]), false).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = resolve(&u, &req(&["curl=9"]), false).unwrap_err();
        assert!(e.to_string().contains("it has 1"), "{e}");
    }

    #[test]
    fn conflicts_and_version_clashes_name_both_chains() {
        let u = universe(
            "a 1 D:b
             b 1 C:c
             c 1
             top 1 D:a, c",
        );
        let e = resolve(&u, &req(&["top"]), false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("recipe → top → a → b"), "{msg}");
        assert!(msg.contains("recipe → top → c"), "{msg}");

        let u = universe(
            "x 1 D:lib (= 1)
             y 1 D:lib (>= 2)
             lib 1
             lib 2",
        );
        let e = resolve(&u, &req(&["x", "y"]), false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("recipe → y → lib (>= 2)"), "{msg}");
        assert!(msg.contains("recipe → x → lib (= 1)"), "{msg}");
    }
}
