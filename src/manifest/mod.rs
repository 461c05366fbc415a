//! Agent manifests (`agents/<agent>/bottle.json`) and base image recipes
//! (`images/<name>.json`), schema 1: parsing, validation and hashing of the
//! local inputs they name.
//!
//! Invariants of a loaded [`Agent`]:
//! - every field was known (unknown fields are errors) and the schema is 1;
//! - skills are folders with a `SKILL.md` whose front matter has `name` and
//!   `description`; skill names are unique;
//! - env names are valid variable names, without duplicates, sorted;
//! - egress hosts are normalized patterns (`host::Pattern`), sorted, unique,
//!   merged with `policy::DEFAULT_ALLOW` unless `"defaults": false`;
//! - every local path stays inside the agent folder (recipes: `images/`),
//!   except a path the manifest itself writes with `..`, which may reach
//!   elsewhere in the project, never outside it; symlinks inside an input
//!   folder stay inside that folder;
//! - the local inputs are already hashed (see `tree`), so `lock` needs no
//!   further look at the file system to decide staleness.
//!
//! Errors name the file, the field path, a line where one can be found, what
//! was expected and what to do (see [`ManifestError`]).

pub mod error;
pub mod json;
pub mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

pub use error::{Diag, ManifestError};
use tree::Tree;

use crate::host::Pattern;
use crate::policy::{self, Egress, Limits, Policy, SidecarKind};

pub const MANIFEST_SCHEMA: u32 = 1;
pub const RECIPE_SCHEMA: u32 = 1;

const MANIFEST_HELP: &str =
    "the manifest fields are listed in README.md, section \"Manifest reference\"";
const RECIPE_HELP: &str =
    "the recipe fields are listed in README.md, section \"Base image recipes\"";

/// Most skills one agent may list: each is one image layer, and the engine
/// runs no image deeper than [`crate::oci::image::MAX_LAYERS`]; the rest is
/// room for the base image's layers and bottle's own.
pub const MAX_SKILLS: usize = 100;

/// Home of the agent user inside every image.
pub const AGENT_HOME: &str = "home/agent";
pub const AGENT_UID: u64 = 1000;

// ---------------------------------------------------------------------------
// Raw documents, exactly as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[allow(dead_code)]
    schema: u32,
    image: String,
    #[serde(default)]
    skills: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    sidecar: Option<SidecarKind>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// `env` name → where the builtin sidecar may send its value.
    #[serde(default)]
    secrets: BTreeMap<String, RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    hosts: Vec<String>,
    #[serde(default)]
    header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    ssh: Vec<String>,
    #[serde(default = "yes")]
    defaults: bool,
}

impl Default for RawEgress {
    fn default() -> Self {
        RawEgress {
            allow: Vec::new(),
            ssh: Vec::new(),
            defaults: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    pids: Option<u64>,
    #[serde(default)]
    disk: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    #[allow(dead_code)]
    schema: u32,
    from: String,
    #[serde(default)]
    fetch: Vec<RawFetch>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    links: BTreeMap<String, String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    packages: Option<RawPackages>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackages {
    include: Vec<String>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    essential: bool,
    #[serde(default)]
    archive: Option<RawArchive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    uri: String,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    url: String,
    #[serde(default)]
    sha256: Option<String>,
    dest: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    unpack: bool,
}

// ---------------------------------------------------------------------------
// Validated forms.

/// A validated agent manifest with its local inputs hashed.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    /// Manifest path relative to the project root (`agents/hello/bottle.json`).
    pub file: String,
    /// The manifest document with keys sorted (what the inputs hash covers).
    pub canonical: serde_json::Value,
    pub recipe: Recipe,
    pub skills: Vec<Skill>,
    /// Sorted, unique.
    pub env: Vec<String>,
    /// Normalized, merged with defaults, sorted, unique.
    pub egress: Egress,
    pub sidecar: SidecarKind,
    pub limits: Limits,
    pub prompt: Option<LocalInput>,
    /// Image path (relative, no leading `/`) → local input; sorted by image path.
    pub files: Vec<(String, LocalInput)>,
    /// Secret bindings, sorted by env name.
    pub secrets: Vec<policy::SecretBinding>,
}

#[derive(Debug, Clone)]
pub struct Skill {
    pub name: String,
    pub description: String,
    pub input: LocalInput,
}

/// A local file or folder, hashed.
#[derive(Debug, Clone)]
pub struct LocalInput {
    /// Path relative to the project root, `/`-separated (never absolute, so
    /// the lockfile is the same in every checkout).
    pub source: String,
    pub tree: Tree,
}

/// A base image recipe, or the implicit one when the manifest's `image` is an
/// OCI reference.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Recipe name (`busybox`), or the reference itself for an implicit recipe.
    pub name: String,
    /// `images/<name>.json`, absent for an implicit recipe.
    pub file: Option<String>,
    /// Canonical document, `null` for an implicit recipe.
    pub canonical: serde_json::Value,
    pub from: From,
    pub fetch: Vec<Fetch>,
    /// Image path → local input, sorted by image path.
    pub files: Vec<(String, LocalInput)>,
    /// Image path → symlink target, sorted by image path.
    pub links: Vec<(String, String)>,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Debian packages that make the base's userland (`from` is `scratch`).
    pub packages: Option<Packages>,
}

/// A recipe's `packages`: see `crate::debian`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packages {
    /// `name` or `name=version`, as written.
    pub include: Vec<String>,
    /// Debian architecture; default from the platform.
    pub arch: Option<String>,
    /// Add every `Essential: yes` package too.
    pub essential: bool,
    /// The archive to use instead of the host's apt configuration.
    pub archive: Option<Archive>,
    /// Canonical JSON of the object, for the lock's request hash.
    pub canonical: serde_json::Value,
}

/// An archive named in the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Keyring file (absolute path).
    pub signed_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Scratch,
    /// An OCI reference (`debian:bookworm-slim`, `repo@sha256:…`), pinned by `lock`.
    Reference(String),
}

/// One downloaded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub url: String,
    /// Lowercase hex, when the recipe asserts it.
    pub sha256: Option<String>,
    /// Image path (relative, no leading `/`).
    pub dest: String,
    pub mode: u32,
    /// Unpack a tar (optionally gzip-compressed) under `dest` instead of copying.
    pub unpack: bool,
    /// Field path in the recipe (`fetch[0]`), for messages.
    pub field: String,
}

impl Agent {
    /// The effective policy; `sidecar_image` is the pinned pipelock image
    /// (`repo@sha256:…`) when the sidecar is pipelock.
    pub fn policy(&self, sidecar_image: Option<String>) -> Policy {
        Policy {
            schema: policy::POLICY_SCHEMA,
            agent: self.name.clone(),
            egress: self.egress.clone(),
            env: self.env.clone(),
            sidecar: policy::Sidecar {
                kind: self.sidecar,
                image: sidecar_image,
            },
            limits: self.limits,
            secrets: self.secrets.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Agent names become repository paths (`bottle/<agent>`) and folder names.
pub fn is_agent_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// Names of all agents (folders of `agents/` holding a `bottle.json`), sorted.
pub fn list_agents(root: &Path) -> Result<Vec<String>, ManifestError> {
    let dir = root.join("agents");
    let rd = fs::read_dir(&dir).map_err(|e| ManifestError::Io {
        file: "agents/".into(),
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut out = Vec::new();
    for item in rd.flatten() {
        if let Some(name) = item.file_name().to_str() {
            if item.path().join("bottle.json").is_file() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Load and validate `agents/<name>/bottle.json` under `root` and everything
/// it names (recipe, skills, prompt, files).
pub fn load_agent(root: &Path, name: &str) -> Result<Agent, ManifestError> {
    let file = format!("agents/{name}/bottle.json");
    if !is_agent_name(name) {
        return Err(ManifestError::invalid(
            &file,
            None,
            "",
            format!("`{name}` is not a valid agent name"),
            "agent names are lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit",
        ));
    }
    let agent_dir = format!("agents/{name}");
    let (doc, raw): (Doc, RawManifest) = Doc::load(
        root,
        file,
        "create it, or check the agent name (`ls agents/`)",
        MANIFEST_HELP,
        MANIFEST_SCHEMA,
    )?;
    let (file, text, value) = (doc.file.clone(), &doc.text, &doc.value);
    let bad = |field: &str, needle: Option<&str>, problem: String, help: &str| {
        doc.bad(field, needle, problem, help)
    };

    // image: a recipe name or an OCI reference.
    let recipe = if is_recipe_name(&raw.image) {
        load_recipe(root, &raw.image).map_err(|e| match e {
            ManifestError::Invalid(d) if d.file == format!("images/{}.json", raw.image) && d.field.is_empty() && d.problem.starts_with("does not exist") => bad(
                "image",
                Some(&raw.image),
                format!("no recipe `images/{}.json`", raw.image),
                "name a recipe in images/ (without `.json`) or an OCI reference such as `debian:bookworm-slim`",
            ),
            other => other,
        })?
    } else {
        check_reference(&raw.image).map_err(|p| bad("image", Some(&raw.image), p, "write a recipe name from images/ or an OCI reference such as `debian:bookworm-slim` or `repo@sha256:<hex>`"))?;
        Recipe {
            name: raw.image.clone(),
            file: None,
            canonical: serde_json::Value::Null,
            from: From::Reference(raw.image.clone()),
            fetch: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            user: None,
            env: BTreeMap::new(),
            workdir: None,
            entrypoint: None,
            cmd: None,
            packages: None,
        }
    };

    // skills
    if raw.skills.len() > MAX_SKILLS {
        return Err(bad(
            "skills",
            Some("skills"),
            format!(
                "{} skills listed; at most {MAX_SKILLS} are allowed (each skill is one image layer, \
                 and the engine refuses to run an image deeper than {} layers)",
                raw.skills.len(),
                crate::oci::image::MAX_LAYERS
            ),
            "merge related skills into one skill folder, or drop some",
        ));
    }
    let mut skills: Vec<Skill> = Vec::new();
    for (i, s) in raw.skills.iter().enumerate() {
        let field = format!("skills[{i}]");
        let (abs, source) = resolve_local(root, &agent_dir, s, true)
            .map_err(|(p, h)| bad(&field, Some(s), p, &h))?;
        let skill_md = abs.join("SKILL.md");
        let md_meta = fs::symlink_metadata(&skill_md);
        if !md_meta.as_ref().is_ok_and(|m| m.is_file()) {
            return Err(bad(
                &field,
                Some(s),
                format!("`{source}` has no SKILL.md"),
                "a skill is a folder with a SKILL.md starting with front matter (`---`, `name: …`, `description: …`, `---`)",
            ));
        }
        let md = fs::read_to_string(&skill_md).map_err(|e| ManifestError::Io {
            file: file.clone(),
            path: format!("{source}/SKILL.md"),
            source: e,
        })?;
        let fm = front_matter(&md).map_err(|p| {
            ManifestError::invalid(
                format!("{source}/SKILL.md"),
                None,
                "front matter",
                p,
                format!("start SKILL.md with `---`, then `name: <skill-name>` and `description: <one line>`, then `---` (named by `{field}` in {file})"),
            )
        })?;
        let name = fm.get("name").cloned().unwrap_or_default();
        let description = fm.get("description").cloned().unwrap_or_default();
        if name.is_empty() || description.is_empty() {
            let missing = if name.is_empty() {
                "name"
            } else {
                "description"
            };
            return Err(ManifestError::invalid(
                format!("{source}/SKILL.md"),
                None,
                format!("front matter.{missing}"),
                format!("front matter has no `{missing}`"),
                format!(
                    "add a `{missing}: …` line between the `---` fences (skill named by `{field}` in {file})"
                ),
            ));
        }
        if !is_skill_name(&name) {
            return Err(ManifestError::invalid(
                format!("{source}/SKILL.md"),
                None,
                "front matter.name",
                format!("skill name `{name}` is not valid"),
                "use lowercase letters, digits and `-` (at most 64), as Claude Code expects",
            ));
        }
        if let Some(j) = skills.iter().position(|k| k.name == name) {
            return Err(bad(
                &field,
                Some(s),
                format!(
                    "skill name `{name}` is already used by skills[{j}] (`{}`)",
                    skills[j].input.source
                ),
                "skill names must be unique: rename one in its SKILL.md front matter or drop one",
            ));
        }
        let tree = tree::walk_dir(&abs).map_err(|w| {
            ManifestError::invalid(
                &file,
                json::locate(text, s),
                &field,
                format!("`{source}/{}`: {}", w.rel, w.problem),
                w.help,
            )
        })?;
        skills.push(Skill {
            name,
            description,
            input: LocalInput { source, tree },
        });
    }

    // env
    let mut env = Vec::new();
    let mut seen = FirstSeen::default();
    for (i, e) in raw.env.iter().enumerate() {
        let field = format!("env[{i}]");
        if !policy::is_env_name(e) {
            return Err(bad(
                &field,
                Some(e),
                format!("`{e}` is not a valid environment variable name"),
                "write only the NAME (letters, digits, `_`, not starting with a digit); values come from the host at run time",
            ));
        }
        if let Some(j) = seen.check(e, i) {
            return Err(bad(
                &field,
                Some(e),
                format!("`{e}` is listed twice (also env[{j}])"),
                "remove the duplicate",
            ));
        }
        env.push(e.clone());
    }
    env.sort();
    let secrets = secret_bindings(&raw.secrets, &env)
        .map_err(|(field, needle, problem, help)| bad(&field, needle.as_deref(), problem, help))?;

    // egress
    let mut allow = BTreeSet::new();
    if raw.egress.defaults {
        for h in policy::DEFAULT_ALLOW {
            allow.insert((*h).to_string());
        }
    }
    for (i, h) in raw.egress.allow.iter().enumerate() {
        let p = Pattern::parse(h).map_err(|e| {
            bad(
                &format!("egress.allow[{i}]"),
                Some(h),
                format!("`{h}` {e}"),
                "write a bare hostname (`example.com`) or `*.example.com` for its subdomains",
            )
        })?;
        if let Some(problem) = crate::egress::config::pipelock_pattern_problem(&p) {
            return Err(bad(
                &format!("egress.allow[{i}]"),
                Some(h),
                format!("`{h}` {problem}"),
                "list the hosts themselves, or a wildcard over two labels or more",
            ));
        }
        allow.insert(p.to_string());
    }
    let mut ssh = BTreeSet::new();
    for (i, h) in raw.egress.ssh.iter().enumerate() {
        let p = Pattern::parse(h).map_err(|e| {
            bad(
                &format!("egress.ssh[{i}]"),
                Some(h),
                format!("`{h}` {e}"),
                "write a bare hostname such as `github.com`",
            )
        })?;
        if let Some(problem) = crate::egress::config::pipelock_pattern_problem(&p) {
            return Err(bad(
                &format!("egress.ssh[{i}]"),
                Some(h),
                format!("`{h}` {problem}"),
                "write a bare hostname such as `github.com`",
            ));
        }
        ssh.insert(p.to_string());
    }
    let egress = Egress {
        allow: allow.into_iter().collect(),
        ssh: ssh.into_iter().collect(),
    };

    // limits
    let mut limits = Limits::default();
    if let Some(l) = &raw.limits {
        if let Some(m) = &l.memory {
            limits.memory_mib = parse_memory(m).ok_or_else(|| {
                bad(
                    "limits.memory",
                    Some(m),
                    format!("`{m}` is not a memory size"),
                    "write a positive size with a unit: `512m`, `4g`, `2GiB`",
                )
            })?;
        }
        if let Some(c) = l.cpus {
            let millis = (c * 1000.0).round();
            if !(1.0..=1_000_000.0).contains(&millis) {
                return Err(bad(
                    "limits.cpus",
                    None,
                    format!("`{c}` is not a CPU count"),
                    "write a positive number of CPUs such as `2` or `0.5`",
                ));
            }
            limits.cpu_millis = millis as u64;
        }
        if let Some(p) = l.pids {
            if p == 0 {
                return Err(bad(
                    "limits.pids",
                    None,
                    "must be positive".into(),
                    "write e.g. `512`",
                ));
            }
            limits.pids = p;
        }
        if let Some(d) = &l.disk {
            limits.disk_mib = parse_memory(d).ok_or_else(|| {
                bad(
                    "limits.disk",
                    Some(d),
                    format!("`{d}` is not a size"),
                    "write a positive size with a unit: `512m`, `1g`, `2GiB`",
                )
            })?;
        }
        // The same bounds an image's policy label is held to at run time.
        limits.check().map_err(|(f, problem)| {
            let field = match f {
                "memory_mib" => "limits.memory",
                "cpu_millis" => "limits.cpus",
                "disk_mib" => "limits.disk",
                _ => "limits.pids",
            };
            bad(field, None, problem, "write a smaller value")
        })?;
    }

    // prompt
    let prompt = match &raw.prompt {
        None => None,
        Some(p) => {
            let (abs, source) = resolve_local(root, &agent_dir, p, false)
                .map_err(|(pr, h)| bad("prompt", Some(p), pr, &h))?;
            let tree = tree::hash_single_file(&abs).map_err(|w| {
                bad(
                    "prompt",
                    Some(p),
                    format!("`{source}` {}", w.problem),
                    &w.help,
                )
            })?;
            Some(LocalInput { source, tree })
        }
    };

    // files
    let mut files = Vec::new();
    for (dest, src) in &raw.files {
        let field = format!("files.{dest}");
        let dest_rel = image_path(dest).map_err(|p| {
            bad(
                &field,
                Some(dest),
                p,
                "write an absolute path inside the image, e.g. `/home/agent/.claude/CLAUDE.md`",
            )
        })?;
        let input =
            local_input(root, &agent_dir, src).map_err(|(p, h)| bad(&field, Some(src), p, &h))?;
        files.push((dest_rel, input));
    }

    Ok(Agent {
        name: name.to_string(),
        file,
        canonical: json::canonical(value),
        recipe,
        skills,
        env,
        egress,
        sidecar: raw.sidecar.unwrap_or(SidecarKind::Pipelock),
        limits,
        prompt,
        files,
        secrets,
    })
}

type FieldProblem = (String, Option<String>, String, &'static str);

/// Validate `secrets`: each name is a forwarded `env` name, hosts are
/// patterns, the header is `bearer`, `basic` or a header name.
fn secret_bindings(
    raw: &BTreeMap<String, RawSecret>,
    env: &[String],
) -> Result<Vec<policy::SecretBinding>, FieldProblem> {
    let mut out = Vec::new();
    for (name, s) in raw {
        let field = format!("secrets.{name}");
        if !env.contains(name) {
            return Err((
                field,
                Some(name.clone()),
                format!("`{name}` is not listed in `env`"),
                "add the name to `env` too: only forwarded variables can be secrets",
            ));
        }
        if s.hosts.is_empty() {
            return Err((
                format!("{field}.hosts"),
                Some(name.clone()),
                "no hosts".into(),
                "name the hosts the value may be sent to, e.g. [\"github.com\"]",
            ));
        }
        let mut hosts = Vec::new();
        for h in &s.hosts {
            let p = crate::host::Pattern::parse(h).map_err(|e| {
                (
                    format!("{field}.hosts"),
                    Some(h.clone()),
                    format!("`{h}` {e}"),
                    "write a hostname or `*.domain`",
                )
            })?;
            hosts.push(p.to_string());
        }
        hosts.sort();
        hosts.dedup();
        let header = s.header.clone().unwrap_or_else(|| "bearer".into());
        if let Err(e) = crate::egress::proxy::secrets::HeaderKind::parse(&header) {
            return Err((
                format!("{field}.header"),
                Some(header),
                e,
                "use `bearer`, `basic` (git over HTTPS) or a header name such as `x-api-key`",
            ));
        }
        out.push(policy::SecretBinding {
            env: name.clone(),
            hosts,
            header: header.to_ascii_lowercase(),
        });
    }
    Ok(out)
}

/// Load and validate `images/<name>.json`.
pub fn load_recipe(root: &Path, name: &str) -> Result<Recipe, ManifestError> {
    let file = format!("images/{name}.json");
    let (doc, raw): (Doc, RawRecipe) = Doc::load(
        root,
        file,
        "create the recipe or fix the name",
        RECIPE_HELP,
        RECIPE_SCHEMA,
    )?;
    let (file, value) = (doc.file.clone(), &doc.value);
    let bad = |field: &str, needle: Option<&str>, problem: String, help: &str| {
        doc.bad(field, needle, problem, help)
    };
    let from = if raw.from == "scratch" {
        From::Scratch
    } else {
        check_reference(&raw.from).map_err(|p| {
            bad(
                "from",
                Some(&raw.from),
                p,
                "write `scratch` or an OCI reference such as `debian:bookworm-slim`",
            )
        })?;
        From::Reference(raw.from.clone())
    };
    let mut fetch = Vec::new();
    let mut dests = BTreeSet::new();
    for (i, f) in raw.fetch.iter().enumerate() {
        let field = format!("fetch[{i}]");
        if !(f.url.starts_with("https://")
            || f.url.starts_with("http://")
            || f.url.starts_with("file:///"))
        {
            return Err(bad(
                &format!("{field}.url"),
                Some(&f.url),
                format!("`{}` is not an http(s):// or file:/// URL", f.url),
                "use https:// for downloads, or file:///absolute/path for a file on this machine",
            ));
        }
        let sha256 = match &f.sha256 {
            None => None,
            Some(s) => {
                let hexpart = s.strip_prefix("sha256:").unwrap_or(s);
                if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        &format!("{field}.sha256"),
                        Some(s),
                        format!("`{s}` is not a sha256 (64 hex digits)"),
                        "copy the published sha256, or drop the field and let `bottle lock` pin it",
                    ));
                }
                Some(hexpart.to_ascii_lowercase())
            }
        };
        let dest = image_path(&f.dest).map_err(|p| {
            bad(
                &format!("{field}.dest"),
                Some(&f.dest),
                p,
                "write an absolute path inside the image, e.g. `/usr/local/bin/tool`",
            )
        })?;
        if !dests.insert(dest.clone()) {
            return Err(bad(
                &format!("{field}.dest"),
                Some(&f.dest),
                format!("`{}` is written twice", f.dest),
                "give each fetched input its own destination",
            ));
        }
        let mode = match &f.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| {
                    bad(
                        &format!("{field}.mode"),
                        Some(m),
                        format!("`{m}` is not an octal mode"),
                        "write the mode as a string of octal digits, e.g. \"0755\"",
                    )
                })?,
        };
        fetch.push(Fetch {
            url: f.url.clone(),
            sha256,
            dest,
            mode,
            unpack: f.unpack,
            field,
        });
    }
    let mut files = Vec::new();
    for (dest, src) in &raw.files {
        let field = format!("files.{dest}");
        let dest_rel = image_path(dest).map_err(|p| {
            bad(
                &field,
                Some(dest),
                p,
                "write an absolute path inside the image",
            )
        })?;
        let input =
            local_input(root, "images", src).map_err(|(p, h)| bad(&field, Some(src), p, &h))?;
        files.push((dest_rel, input));
    }
    let mut links = Vec::new();
    for (path, target) in &raw.links {
        let field = format!("links.{path}");
        let rel = image_path(path).map_err(|p| {
            bad(
                &field,
                Some(path),
                p,
                "write an absolute path inside the image, e.g. `/bin/sh`",
            )
        })?;
        if target.is_empty() || !tree::stays_inside(&rel, target) && !target.starts_with('/') {
            return Err(bad(
                &field,
                Some(target),
                format!("symlink target `{target}` leaves the image root"),
                "write an absolute target (`/bin/busybox`) or a relative one that stays inside the image",
            ));
        }
        links.push((rel, target.clone()));
    }
    for (i, (k, _)) in raw.env.iter().enumerate() {
        if !policy::is_env_name(k) {
            return Err(bad(
                &format!("env.{k}"),
                Some(k),
                format!("`{k}` is not a valid environment variable name (entry {i})"),
                "use letters, digits and `_`",
            ));
        }
    }
    if let Some(w) = &raw.workdir {
        image_path(w).map_err(|p| bad("workdir", Some(w), p, "write an absolute path"))?;
    }
    if let Some(u) = &raw.user {
        if u.is_empty() || u.contains(char::is_whitespace) {
            return Err(bad(
                "user",
                Some(u),
                format!("`{u}` is not a user"),
                "write `uid:gid` such as `1000:1000`, or a user name",
            ));
        }
    }
    let packages = match &raw.packages {
        None => None,
        Some(p) => Some(check_packages(p, &from, &doc)?),
    };
    Ok(Recipe {
        packages,
        name: name.to_string(),
        file: Some(file.clone()),
        canonical: json::canonical(value),
        from,
        fetch,
        files,
        links,
        user: raw.user,
        env: raw.env,
        workdir: raw.workdir,
        entrypoint: raw.entrypoint,
        cmd: raw.cmd,
    })
}

/// Where each item of a list was first seen: one hash lookup per item, so
/// checking a list for duplicates is linear (a scan of the earlier items
/// per item made 1M `env` names take minutes).
struct FirstSeen<'a, T: ?Sized>(std::collections::HashMap<&'a T, usize>);

impl<T: ?Sized> Default for FirstSeen<'_, T> {
    fn default() -> Self {
        FirstSeen(std::collections::HashMap::new())
    }
}

impl<'a, T: ?Sized + Eq + std::hash::Hash> FirstSeen<'a, T> {
    /// The index `item` was first seen at, or `None` (and remember `i`).
    fn check(&mut self, item: &'a T, i: usize) -> Option<usize> {
        match self.0.entry(item) {
            std::collections::hash_map::Entry::Occupied(o) => Some(*o.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                None
            }
        }
    }
}

/// Validate a recipe's `packages` (names, architecture, archive).
fn check_packages(p: &RawPackages, from: &From, doc: &Doc) -> Result<Packages, ManifestError> {
    let bad = |field: &str, needle: Option<&str>, problem: String, help: &str| {
        doc.bad(field, needle, problem, help)
    };
    let value = &doc.value;
    if *from != From::Scratch {
        return Err(bad(
            "packages",
            None,
            "`packages` builds the base itself, so `from` must be `scratch`".into(),
            "write `\"from\": \"scratch\"`, or drop `packages` and use the base image's own",
        ));
    }
    let is_name = |n: &str| {
        n.len() >= 2
            && n.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c))
    };
    for (i, s) in p.include.iter().enumerate() {
        let (n, v) = s.split_once('=').unwrap_or((s, "x"));
        if !is_name(n) || v.is_empty() || v.contains(char::is_whitespace) {
            return Err(bad(
                &format!("packages.include[{i}]"),
                Some(s),
                format!("`{s}` is not a Debian package name, optionally `=version`"),
                "write e.g. `git` or `git=1:2.39.5-0+deb12u2` (lowercase name)",
            ));
        }
    }
    if p.include.is_empty() {
        return Err(bad(
            "packages.include",
            None,
            "lists no package".into(),
            "name at least one package",
        ));
    }
    if let Some(a) = &p.arch {
        if !is_name(a) {
            return Err(bad(
                "packages.arch",
                Some(a),
                format!("`{a}` is not a Debian architecture"),
                "write e.g. `amd64` or `arm64`, or drop it to follow --platform",
            ));
        }
    }
    let archive = match &p.archive {
        None => None,
        Some(a) => {
            let ok_uri = ["http://", "https://", "file:///"]
                .iter()
                .any(|s| a.uri.starts_with(s));
            if !ok_uri
                || a.suites.is_empty()
                || a.components.is_empty()
                || !a.signed_by.starts_with('/')
            {
                return Err(bad(
                    "packages.archive",
                    None,
                    "needs an http(s):// or file:/// `uri`, `suites`, `components` and an absolute `signed_by` keyring path".into(),
                    "name the archive like a deb822 apt source, or drop `archive` to use the host's apt configuration",
                ));
            }
            Some(Archive {
                uri: a.uri.clone(),
                suites: a.suites.clone(),
                components: a.components.clone(),
                signed_by: a.signed_by.clone(),
            })
        }
    };
    Ok(Packages {
        include: p.include.clone(),
        arch: p.arch.clone(),
        essential: p.essential,
        archive,
        canonical: json::canonical(&value["packages"]),
    })
}

/// One JSON document under validation: its project-relative name and its
/// text, kept together so every error can name the file, field and line.
struct Doc {
    file: String,
    text: String,
    value: serde_json::Value,
}

impl Doc {
    /// Read `file`, check its schema version first (so a future schema gets
    /// that message, not an unknown-field one), then parse it strictly.
    fn load<T: serde::de::DeserializeOwned>(
        root: &Path,
        file: String,
        missing_help: &str,
        parse_help: &str,
        schema: u32,
    ) -> Result<(Doc, T), ManifestError> {
        let text = read_text(root, &file, &file, missing_help)?;
        let value = json::parse_value(&file, &text, parse_help)?;
        check_schema(&file, &text, &value, schema)?;
        let raw = json::parse(&file, &text, parse_help)?;
        Ok((Doc { file, text, value }, raw))
    }

    /// An invalid `field`, located at the first occurrence of `needle`.
    fn bad(&self, field: &str, needle: Option<&str>, problem: String, help: &str) -> ManifestError {
        ManifestError::invalid(
            &self.file,
            needle.and_then(|n| json::locate(&self.text, n)),
            field,
            problem,
            help,
        )
    }
}

fn read_text(root: &Path, rel: &str, file: &str, help: &str) -> Result<String, ManifestError> {
    let path = root.join(rel);
    match fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
            ManifestError::invalid(
                file,
                None,
                "",
                "is not UTF-8 text",
                "save the file as UTF-8 JSON",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ManifestError::invalid(
            file,
            None,
            "",
            "does not exist",
            help,
        )),
        Err(e) => Err(ManifestError::Io {
            file: file.to_string(),
            path: path.display().to_string(),
            source: e,
        }),
    }
}

fn check_schema(
    file: &str,
    text: &str,
    value: &serde_json::Value,
    want: u32,
) -> Result<(), ManifestError> {
    let at = json::locate(text, "schema");
    match value.get("schema") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(want)) => Ok(()),
        Some(other) => Err(ManifestError::invalid(
            file,
            at,
            "schema",
            format!("schema {other} is not supported (this bottle reads schema {want})"),
            format!("write `\"schema\": {want}`, or use a bottle version that reads this schema"),
        )),
        None if !value.is_object() => Err(ManifestError::invalid(
            file,
            None,
            "",
            "is not a JSON object",
            "the file must hold one JSON object `{ \"schema\": 1, … }`",
        )),
        None => Err(ManifestError::invalid(
            file,
            None,
            "schema",
            "missing",
            format!("add `\"schema\": {want}` as the first field"),
        )),
    }
}

fn is_recipe_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && !s.contains(':')
}

fn is_skill_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

pub(crate) fn check_reference(s: &str) -> Result<(), String> {
    oci_client::Reference::try_from(s)
        .map(|_| ())
        .map_err(|e| format!("`{s}` is not an OCI reference ({e})"))
}

/// `/abs/path` in the image → `abs/path`; no `.`/`..`/empty components.
pub fn image_path(p: &str) -> Result<String, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("`{p}` is not an absolute path"));
    };
    if rest.is_empty() {
        return Err("`/` itself cannot be written".into());
    }
    for part in rest.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("`{p}` has an empty, `.` or `..` component"));
        }
    }
    Ok(rest.to_string())
}

/// Parse `512m`, `4g`, `4GiB`, `1024MiB` into MiB.
fn parse_memory(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let digits: String = lower.chars().take_while(|c| c.is_ascii_digit()).collect();
    let unit = &lower[digits.len()..];
    let n: u64 = digits.parse().ok()?;
    let mib = match unit {
        "m" | "mb" | "mib" => n,
        "g" | "gb" | "gib" => n.checked_mul(1024)?,
        _ => return None,
    };
    (mib > 0).then_some(mib)
}

/// Resolve `rel` (as written in a manifest under `base`, root-relative) to an
/// absolute path and its root-relative form, enforcing the containment rule:
/// inside `base` unless the written path leaves it with `..` (explicit), and
/// never outside the project root, also not through a symlink.
fn resolve_local(
    root: &Path,
    base: &str,
    rel: &str,
    want_dir: bool,
) -> Result<(PathBuf, String), (String, String)> {
    if rel.is_empty() || rel.starts_with('/') {
        return Err((
            format!("`{rel}` is not a relative path"),
            format!("write a path relative to `{base}/`"),
        ));
    }
    let mut parts: Vec<String> = base.split('/').map(str::to_string).collect();
    let mut explicit = false;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err((
                        format!("`{rel}` escapes the project root"),
                        "inputs must live inside the project (the folder holding `agents/`), so every checkout builds the same image".into(),
                    ));
                }
                explicit = true;
            }
            _ => return Err((format!("`{rel}` is not a relative path"), String::new())),
        }
    }
    let source = parts.join("/");
    let lexical_inside_base = source == base || source.starts_with(&format!("{base}/"));
    let abs = root.join(&source);
    let meta = match fs::metadata(&abs) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err((
                format!("`{source}` does not exist"),
                format!("create it, or fix the path (relative to `{base}/`)"),
            ));
        }
        Err(e) => return Err((format!("`{source}`: {e}"), String::new())),
    };
    if want_dir && !meta.is_dir() {
        return Err((
            format!("`{source}` is not a folder"),
            "name a folder".into(),
        ));
    }
    if !want_dir && !meta.is_file() {
        return Err((
            format!("`{source}` is not a regular file"),
            "name a file".into(),
        ));
    }
    let canon_root =
        fs::canonicalize(root).map_err(|e| (format!("project root: {e}"), String::new()))?;
    let canon = fs::canonicalize(&abs).map_err(|e| (format!("`{source}`: {e}"), String::new()))?;
    let allowed = if lexical_inside_base && !explicit {
        canon_root.join(base)
    } else {
        canon_root
    };
    let allowed = fs::canonicalize(&allowed).unwrap_or(allowed);
    if !canon.starts_with(&allowed) {
        return Err((
            format!("`{source}` leads through a symlink to `{}`, outside `{}`", canon.display(), allowed.strip_prefix(root).unwrap_or(&allowed).display()),
            "copy the input into the folder, or name the outside path explicitly with `..` (it must stay inside the project)".into(),
        ));
    }
    Ok((abs, source))
}

/// A file or folder named in `files`.
fn local_input(root: &Path, base: &str, rel: &str) -> Result<LocalInput, (String, String)> {
    let is_dir = fs::metadata(root.join(base).join(rel)).is_ok_and(|m| m.is_dir());
    let (abs, source) = resolve_local(root, base, rel, is_dir)?;
    let tree = if is_dir {
        tree::walk_dir(&abs)
    } else {
        tree::hash_single_file(&abs)
    }
    .map_err(|w| {
        let at = if w.rel.is_empty() {
            source.clone()
        } else {
            format!("{source}/{}", w.rel)
        };
        (format!("`{at}`: {}", w.problem), w.help)
    })?;
    Ok(LocalInput { source, tree })
}

/// The YAML-ish front matter of a SKILL.md: `key: value` lines between `---`
/// fences. Indented lines continue the previous value (folded with a space).
pub fn front_matter(md: &str) -> Result<BTreeMap<String, String>, String> {
    let mut lines = md.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return Err("SKILL.md does not start with a `---` front matter fence".into());
    }
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for (i, line) in lines.enumerate() {
        let lineno = i + 2;
        if line.trim_end() == "---" {
            return Ok(out);
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some(k) = &last else {
                return Err(format!("line {lineno}: indented line before any `key:`"));
            };
            let v = out.entry(k.clone()).or_default();
            if !v.is_empty() {
                v.push(' ');
            }
            v.push_str(line.trim());
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!(
                "line {lineno}: `{}` is not a `key: value` line",
                line.trim()
            ));
        };
        let k = k.trim();
        if k.is_empty()
            || !k
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err(format!("line {lineno}: `{k}` is not a key"));
        }
        if out.contains_key(k) {
            return Err(format!("line {lineno}: key `{k}` appears twice"));
        }
        let mut v = v.trim();
        if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            v = &v[1..v.len() - 1];
        }
        let v = if v == "|" || v == ">" { "" } else { v };
        out.insert(k.to_string(), v.to_string());
        last = Some(k.to_string());
    }
    Err("front matter has no closing `---` fence".into())
}

#[cfg(test)]
mod tests;

/// The project root: `explicit` when given, else the nearest ancestor of
/// `cwd` holding an `agents/` folder.
pub fn find_root(explicit: Option<&Path>, cwd: &Path) -> Result<PathBuf, ManifestError> {
    if let Some(r) = explicit {
        if r.join("agents").is_dir() {
            return Ok(r.to_path_buf());
        }
        return Err(ManifestError::invalid(
            r.display().to_string(),
            None,
            "",
            "has no `agents/` folder",
            "pass --root (or BOTTLE_ROOT) pointing at the folder holding `agents/`, `images/` and `lockfiles/`",
        ));
    }
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        if d.join("agents").is_dir() {
            return Ok(d.to_path_buf());
        }
        dir = d.parent();
    }
    Err(ManifestError::invalid(
        cwd.display().to_string(),
        None,
        "",
        "neither this folder nor any parent has an `agents/` folder",
        "run bottle inside a project, or pass --root DIR",
    ))
}
