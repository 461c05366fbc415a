//! `bottle diff`: two inspected bottles ([`crate::inspect::Summary`]) in, a
//! typed [`Review`] out. Pure: no I/O, no clock; the CLI only renders it.
//!
//! Invariants:
//! - capabilities come first and decide [`Review::grew`]: a host or ssh host
//!   added that no pattern of the old side already covers, an env name
//!   added, a secret binding added or sent to more hosts or another header,
//!   a limit raised, or any sidecar change (a different enforcer is never
//!   assumed to be tighter). Removals and lowered limits are not growth;
//! - every list in the output is sorted, so the same two summaries give
//!   the same bytes;
//! - what the bottle *is* (skills, packages, other inputs, base, layers,
//!   image digests) is reported but never counts as growth: a skill's text
//!   changing is reviewed as content, not as a new permission.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::host::Pattern;
use crate::inspect::{BaseFacts, LimitFacts, Provenance, SidecarFacts, Summary};
use crate::policy::SecretBinding;

/// Version of the [`Review`] JSON shape (README, "bottle diff").
pub const REVIEW_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    pub schema: u32,
    pub from: Side,
    pub to: Side,
    /// True when `to` may do something `from` may not (exit 1).
    pub grew: bool,
    /// One line per reason for `grew`.
    pub growth: Vec<String>,
    pub capabilities: CapabilityDiff,
    pub contents: ContentDiff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub agent: String,
    pub manifest_digest: String,
}

/// Names added and removed, each sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SetDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl SetDiff {
    fn of<'a>(
        a: impl IntoIterator<Item = &'a String>,
        b: impl IntoIterator<Item = &'a String>,
    ) -> SetDiff {
        let a: BTreeSet<&String> = a.into_iter().collect();
        let b: BTreeSet<&String> = b.into_iter().collect();
        SetDiff {
            added: b.difference(&a).map(|s| (*s).clone()).collect(),
            removed: a.difference(&b).map(|s| (*s).clone()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Names added, removed and changed (same name, other value), each sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct MapDiff<T> {
    pub added: Vec<Named<T>>,
    pub removed: Vec<Named<T>>,
    pub changed: Vec<Changed<T>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed<T> {
    pub name: String,
    pub from: T,
    pub to: T,
}

impl<T: Clone + PartialEq> MapDiff<T> {
    fn of(a: &BTreeMap<String, T>, b: &BTreeMap<String, T>) -> MapDiff<T> {
        let mut d = MapDiff {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
        };
        for (name, to) in b {
            match a.get(name) {
                None => d.added.push(Named {
                    name: name.clone(),
                    value: to.clone(),
                }),
                Some(from) if from != to => d.changed.push(Changed {
                    name: name.clone(),
                    from: from.clone(),
                    to: to.clone(),
                }),
                Some(_) => {}
            }
        }
        for (name, from) in a {
            if !b.contains_key(name) {
                d.removed.push(Named {
                    name: name.clone(),
                    value: from.clone(),
                });
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityDiff {
    pub hosts: SetDiff,
    pub ssh_hosts: SetDiff,
    pub env: SetDiff,
    pub secrets: MapDiff<SecretValue>,
    /// Only the limits that changed.
    pub limits: Vec<LimitChange>,
    pub sidecar: Option<Changed<SidecarFacts>>,
}

/// A secret binding without its env name (the map key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretValue {
    pub hosts: Vec<String>,
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitChange {
    /// `memory_mib`, `cpu_millis`, `pids`, `disk_mib`.
    pub name: String,
    pub from: u64,
    pub to: u64,
    /// Raised (more room for the agent).
    pub loosened: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentDiff {
    /// Skills by name, valued by their content hash.
    pub skills: MapDiff<String>,
    /// Debian packages by name, valued by version.
    pub packages: MapDiff<String>,
    /// Every other input by name (manifest, recipe, prompt, files, fetched
    /// inputs), valued by its URL or source and its pin.
    pub inputs: MapDiff<String>,
    pub base: Option<Changed<Option<BaseFacts>>>,
    /// Layers by name, valued by digest (by position, `layer:<i>`, when a
    /// side has no lockfile provenance).
    pub layers: MapDiff<String>,
    pub image: Option<Changed<String>>,
    /// What could not be compared, and why (empty when both sides came
    /// with a lockfile).
    pub not_compared: Vec<String>,
}

impl CapabilityDiff {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.ssh_hosts.is_empty()
            && self.env.is_empty()
            && self.secrets.is_empty()
            && self.limits.is_empty()
            && self.sidecar.is_none()
    }
}

/// Is `p` already allowed by one of `old`? (`a.x.org` by `*.x.org`,
/// `*.a.x.org` by `*.x.org`.) Unparsable entries are never covered.
fn covered(p: &str, old: &[String]) -> bool {
    let Ok(p) = Pattern::parse(p) else {
        return false;
    };
    old.iter()
        .filter_map(|q| Pattern::parse(q).ok())
        .any(|q| match (&q, &p) {
            _ if q == p => true,
            (Pattern::Subdomains(_), Pattern::Exact(h)) => q.matches(h),
            (Pattern::Subdomains(s), Pattern::Subdomains(t)) => t
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.ends_with('.')),
            _ => false,
        })
}

fn secrets(bindings: &[SecretBinding]) -> BTreeMap<String, SecretValue> {
    bindings
        .iter()
        .map(|b| {
            let mut hosts = b.hosts.clone();
            hosts.sort();
            (
                b.env.clone(),
                SecretValue {
                    hosts,
                    header: b.header.clone(),
                },
            )
        })
        .collect()
}

fn limits(a: &LimitFacts, b: &LimitFacts) -> Vec<LimitChange> {
    [
        ("cpu_millis", a.cpu_millis, b.cpu_millis),
        ("disk_mib", a.disk_mib, b.disk_mib),
        ("memory_mib", a.memory_mib, b.memory_mib),
        ("pids", a.pids, b.pids),
    ]
    .into_iter()
    .filter(|(_, from, to)| from != to)
    .map(|(name, from, to)| LimitChange {
        name: name.into(),
        from,
        to,
        loosened: to > from,
    })
    .collect()
}

/// What the capabilities of `from` and `to` differ by, and why it is growth.
fn capabilities(a: &Summary, b: &Summary) -> (CapabilityDiff, Vec<String>) {
    let (ca, cb) = (&a.capabilities, &b.capabilities);
    let d = CapabilityDiff {
        hosts: SetDiff::of(&ca.hosts, &cb.hosts),
        ssh_hosts: SetDiff::of(&ca.ssh_hosts, &cb.ssh_hosts),
        env: SetDiff::of(&ca.env, &cb.env),
        secrets: MapDiff::of(&secrets(&ca.secrets), &secrets(&cb.secrets)),
        limits: limits(&ca.limits, &cb.limits),
        sidecar: (ca.sidecar != cb.sidecar).then(|| Changed {
            name: "sidecar".into(),
            from: ca.sidecar.clone(),
            to: cb.sidecar.clone(),
        }),
    };
    let mut growth = Vec::new();
    for h in d.hosts.added.iter().filter(|h| !covered(h, &ca.hosts)) {
        growth.push(format!("host `{h}` may now be reached"));
    }
    for h in d
        .ssh_hosts
        .added
        .iter()
        .filter(|h| !covered(h, &ca.ssh_hosts))
    {
        growth.push(format!("ssh host `{h}` may now be reached"));
    }
    for e in &d.env.added {
        growth.push(format!("env `{e}` is now forwarded from the host"));
    }
    for s in &d.secrets.added {
        growth.push(format!(
            "secret `{}` is now sent to {}",
            s.name,
            s.value.hosts.join(", ")
        ));
    }
    for s in &d.secrets.changed {
        let more: Vec<&String> =
            s.to.hosts
                .iter()
                .filter(|h| !covered(h, &s.from.hosts))
                .collect();
        if !more.is_empty() {
            let more: Vec<&str> = more.iter().map(|h| h.as_str()).collect();
            growth.push(format!(
                "secret `{}` is now also sent to {}",
                s.name,
                more.join(", ")
            ));
        }
        if s.to.header != s.from.header {
            growth.push(format!(
                "secret `{}` now goes in `{}` (was `{}`)",
                s.name, s.to.header, s.from.header
            ));
        }
    }
    for l in d.limits.iter().filter(|l| l.loosened) {
        growth.push(format!(
            "limit `{}` raised from {} to {}",
            l.name, l.from, l.to
        ));
    }
    if let Some(s) = &d.sidecar {
        growth.push(format!(
            "sidecar changed from {} to {}",
            sidecar_name(&s.from),
            sidecar_name(&s.to)
        ));
    }
    (d, growth)
}

pub fn sidecar_name(s: &SidecarFacts) -> String {
    match &s.image {
        Some(i) => format!("{} ({i})", s.kind.as_str()),
        None => s.kind.as_str().to_string(),
    }
}

fn inputs_by(s: &Summary, skills: bool) -> BTreeMap<String, String> {
    s.inputs
        .iter()
        .flatten()
        .filter_map(|i| match i.name.strip_prefix("skill:") {
            Some(name) if skills => Some((name.to_string(), i.hash.clone())),
            None if !skills => {
                let from = i.url.as_deref().or(i.source.as_deref());
                let value = match from {
                    Some(f) => format!("{f} {}", i.hash),
                    None => i.hash.clone(),
                };
                Some((i.name.clone(), value))
            }
            _ => None,
        })
        .collect()
}

fn contents(a: &Summary, b: &Summary) -> ContentDiff {
    // Without a lockfile on both sides, names and inputs are unknown on
    // one: comparing them would report everything as added or removed.
    let known = a.provenance == Provenance::Lockfile && b.provenance == Provenance::Lockfile;
    let packages = |s: &Summary| -> BTreeMap<String, String> {
        s.packages
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    };
    let layers = |s: &Summary| -> BTreeMap<String, String> {
        s.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let name = if known {
                    l.name.clone()
                } else {
                    format!("layer:{i:03}")
                };
                (name, l.digest.clone())
            })
            .collect()
    };
    let empty = MapDiff {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
    };
    ContentDiff {
        skills: if known {
            MapDiff::of(&inputs_by(a, true), &inputs_by(b, true))
        } else {
            empty.clone()
        },
        packages: if known {
            MapDiff::of(&packages(a), &packages(b))
        } else {
            empty.clone()
        },
        inputs: if known {
            MapDiff::of(&inputs_by(a, false), &inputs_by(b, false))
        } else {
            empty
        },
        base: (known && a.base != b.base).then(|| Changed {
            name: "base".into(),
            from: a.base.clone(),
            to: b.base.clone(),
        }),
        layers: MapDiff::of(&layers(a), &layers(b)),
        image: (a.image.manifest_digest != b.image.manifest_digest).then(|| Changed {
            name: "manifest_digest".into(),
            from: a.image.manifest_digest.clone(),
            to: b.image.manifest_digest.clone(),
        }),
        not_compared: if known {
            Vec::new()
        } else {
            vec![
                "skills, packages, inputs and base: a side has no lockfile that locks its digest; layers are compared by position".into(),
            ]
        },
    }
}

/// Compare `from` (the old side) with `to` (the new side).
pub fn review(from: &Summary, to: &Summary) -> Review {
    let (caps, growth) = capabilities(from, to);
    Review {
        schema: REVIEW_SCHEMA,
        from: Side {
            agent: from.agent.clone(),
            manifest_digest: from.image.manifest_digest.clone(),
        },
        to: Side {
            agent: to.agent.clone(),
            manifest_digest: to.image.manifest_digest.clone(),
        },
        grew: !growth.is_empty(),
        growth,
        capabilities: caps,
        contents: contents(from, to),
    }
}

/// One line per change in the capabilities, `+`/`-`/`~` first.
pub fn capability_lines(c: &CapabilityDiff) -> Vec<String> {
    let mut out = Vec::new();
    for (what, d) in [
        ("host", &c.hosts),
        ("ssh host", &c.ssh_hosts),
        ("env", &c.env),
    ] {
        out.extend(d.added.iter().map(|x| format!("+ {what} {x}")));
        out.extend(d.removed.iter().map(|x| format!("- {what} {x}")));
    }
    for s in &c.secrets.added {
        out.push(format!(
            "+ secret {} -> {} ({})",
            s.name,
            s.value.hosts.join(", "),
            s.value.header
        ));
    }
    for s in &c.secrets.removed {
        out.push(format!("- secret {}", s.name));
    }
    for s in &c.secrets.changed {
        out.push(format!(
            "~ secret {}: {} ({}) -> {} ({})",
            s.name,
            s.from.hosts.join(", "),
            s.from.header,
            s.to.hosts.join(", "),
            s.to.header
        ));
    }
    for l in &c.limits {
        let how = if l.loosened { "loosened" } else { "tightened" };
        out.push(format!("~ limit {} {} -> {} ({how})", l.name, l.from, l.to));
    }
    if let Some(s) = &c.sidecar {
        out.push(format!(
            "~ sidecar {} -> {}",
            sidecar_name(&s.from),
            sidecar_name(&s.to)
        ));
    }
    out
}

fn base_name(b: &Option<BaseFacts>) -> String {
    match b {
        Some(b) => match &b.digest {
            Some(d) => format!("{}@{d} ({})", b.reference, b.platform),
            None => format!("{} ({})", b.reference, b.platform),
        },
        None => "unknown".into(),
    }
}

/// One line per change in what the bottle is.
pub fn content_lines(c: &ContentDiff) -> Vec<String> {
    fn map(out: &mut Vec<String>, what: &str, d: &MapDiff<String>) {
        out.extend(
            d.added
                .iter()
                .map(|x| format!("+ {what} {} {}", x.name, x.value)),
        );
        out.extend(
            d.removed
                .iter()
                .map(|x| format!("- {what} {} {}", x.name, x.value)),
        );
        out.extend(
            d.changed
                .iter()
                .map(|x| format!("~ {what} {}: {} -> {}", x.name, x.from, x.to)),
        );
    }
    let mut out = Vec::new();
    map(&mut out, "skill", &c.skills);
    map(&mut out, "package", &c.packages);
    map(&mut out, "input", &c.inputs);
    if let Some(b) = &c.base {
        out.push(format!(
            "~ base {} -> {}",
            base_name(&b.from),
            base_name(&b.to)
        ));
    }
    map(&mut out, "layer", &c.layers);
    if let Some(i) = &c.image {
        out.push(format!("~ image {} -> {}", i.from, i.to));
    }
    out.extend(
        c.not_compared
            .iter()
            .map(|n| format!("? not compared: {n}")),
    );
    out
}

/// The human report.
pub fn render(r: &Review) -> String {
    let mut out = format!(
        "{}@{} -> {}@{}\n",
        r.from.agent, r.from.manifest_digest, r.to.agent, r.to.manifest_digest
    );
    out.push_str(if r.grew {
        "may do: MORE than before\n"
    } else {
        "may do: nothing more than before\n"
    });
    let caps = capability_lines(&r.capabilities);
    if caps.is_empty() {
        out.push_str("  (unchanged)\n");
    }
    for l in caps {
        out.push_str(&format!("  {l}\n"));
    }
    out.push_str("is:\n");
    let contents = content_lines(&r.contents);
    if contents.is_empty() {
        out.push_str("  (unchanged)\n");
    }
    for l in contents {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

/// The Markdown report, for a pull-request comment.
pub fn render_markdown(r: &Review) -> String {
    let mut out = format!(
        "### bottle diff: `{}`\n\n`{}` → `{}`\n\n",
        r.to.agent, r.from.manifest_digest, r.to.manifest_digest
    );
    if r.grew {
        out.push_str("**Capabilities grew**: this bottle may do more than before; ask for a second review.\n\n");
        for g in &r.growth {
            out.push_str(&format!("- {g}\n"));
        }
        out.push('\n');
    } else {
        out.push_str("**Capabilities did not grow.**\n\n");
    }
    let section = |out: &mut String, title: &str, lines: Vec<String>| {
        out.push_str(&format!("#### {title}\n\n"));
        if lines.is_empty() {
            out.push_str("Unchanged.\n\n");
            return;
        }
        out.push_str("```diff\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str("```\n\n");
    };
    section(
        &mut out,
        "What it may do",
        capability_lines(&r.capabilities),
    );
    section(&mut out, "What it is", content_lines(&r.contents));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{InputFacts, from_lockfile};
    use crate::lock::lockfile::Lockfile;
    use crate::policy::SidecarKind;

    fn hello() -> Summary {
        let text = include_str!("../lockfiles/hello.lock.json");
        from_lockfile(&Lockfile::parse("lockfiles/hello.lock.json", text).unwrap())
    }

    #[test]
    fn the_same_summary_is_no_change() {
        let r = review(&hello(), &hello());
        assert!(!r.grew);
        assert!(r.capabilities.is_empty());
        assert!(content_lines(&r.contents).is_empty());
    }

    #[test]
    fn a_host_an_env_name_and_a_skill_are_named_and_grow() {
        let a = hello();
        let mut b = hello();
        b.capabilities.hosts.push("example.net".into());
        b.capabilities.env.push("NEW_NAME".into());
        b.inputs.as_mut().unwrap().push(InputFacts {
            name: "skill:extra".into(),
            source: Some("agents/hello/skills/extra".into()),
            url: None,
            hash: format!("sha256:{}", "a".repeat(64)),
        });
        let r = review(&a, &b);
        assert!(r.grew);
        assert_eq!(r.capabilities.hosts.added, ["example.net"]);
        assert_eq!(r.capabilities.env.added, ["NEW_NAME"]);
        assert!(r.capabilities.hosts.removed.is_empty());
        assert_eq!(
            capability_lines(&r.capabilities),
            ["+ host example.net", "+ env NEW_NAME"]
        );
        let skills: Vec<&str> = r
            .contents
            .skills
            .added
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(skills, ["extra"]);
        assert_eq!(r.growth.len(), 2, "{:?}", r.growth);
    }

    #[test]
    fn removals_and_tighter_limits_are_not_growth() {
        let a = hello();
        let mut b = hello();
        b.capabilities.hosts.retain(|h| h != "example.com");
        b.capabilities.limits.memory_mib /= 2;
        b.capabilities.env.clear();
        let r = review(&a, &b);
        assert!(!r.grew, "{:?}", r.growth);
        assert_eq!(r.capabilities.hosts.removed, ["example.com"]);
        assert_eq!(r.capabilities.limits.len(), 1);
        assert!(!r.capabilities.limits[0].loosened);
        // The other way round it is growth.
        let back = review(&b, &a);
        assert!(back.grew);
        assert_eq!(back.growth.len(), 3, "{:?}", back.growth);
    }

    #[test]
    fn a_host_an_old_wildcard_covers_is_not_growth() {
        let a = hello();
        let mut b = hello();
        b.capabilities.hosts.push("a.example.org".into());
        b.capabilities.hosts.push("*.deep.example.org".into());
        let r = review(&a, &b);
        assert_eq!(r.capabilities.hosts.added.len(), 2);
        assert!(!r.grew, "{:?}", r.growth);
        // `*.example.org` does not cover `example.org` itself.
        b.capabilities.hosts.push("example.org".into());
        assert!(review(&a, &b).grew);
    }

    #[test]
    fn secrets_and_sidecar_changes() {
        let mut a = hello();
        a.capabilities.secrets = vec![SecretBinding {
            env: "TOKEN".into(),
            hosts: vec!["api.example.com".into()],
            header: "bearer".into(),
        }];
        let mut b = a.clone();
        b.capabilities.secrets[0]
            .hosts
            .push("other.example.com".into());
        let r = review(&a, &b);
        assert!(r.grew);
        assert_eq!(r.capabilities.secrets.changed.len(), 1);
        assert!(!review(&b, &a).grew, "fewer hosts for a secret is tighter");
        let mut c = a.clone();
        c.capabilities.sidecar.kind = SidecarKind::Pipelock;
        c.capabilities.sidecar.image = Some("ghcr.io/x/pipelock@sha256:1".into());
        let r = review(&a, &c);
        assert!(r.grew);
        assert!(r.capabilities.sidecar.is_some());
        let mut d = a.clone();
        d.capabilities.secrets.clear();
        assert!(!review(&a, &d).grew);
        assert!(review(&d, &a).grew);
    }

    #[test]
    fn a_side_without_provenance_is_compared_by_position_only() {
        let a = hello();
        let mut b = hello();
        b.provenance = Provenance::Image;
        b.inputs = None;
        b.packages = None;
        b.base = None;
        for (i, l) in b.layers.iter_mut().enumerate() {
            l.name = format!("layer:{i}");
        }
        let r = review(&a, &b);
        assert!(!r.grew);
        assert!(r.contents.skills.is_empty(), "{:?}", r.contents.skills);
        assert!(r.contents.layers.is_empty(), "{:?}", r.contents.layers);
        assert!(r.contents.base.is_none());
        assert_eq!(r.contents.not_compared.len(), 1);
        assert_eq!(content_lines(&r.contents).len(), 1);
    }

    #[test]
    fn a_changed_skill_is_content_only() {
        let a = hello();
        let mut b = hello();
        for i in b.inputs.as_mut().unwrap() {
            if i.name == "skill:greet" {
                i.hash = format!("sha256:{}", "b".repeat(64));
            }
        }
        let r = review(&a, &b);
        assert!(!r.grew);
        assert_eq!(r.contents.skills.changed.len(), 1);
        assert!(render_markdown(&r).contains("did not grow"));
    }
}
