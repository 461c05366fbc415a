//! Pure resolution: from a loaded agent plus its pins (base digest, fetched
//! hashes, sidecar image) to the list of inputs, the inputs hash, and the
//! [`ImageSpec`] that `oci::build` turns into bytes.
//!
//! Invariants: nothing here reads the clock, the host's user, the current
//! directory or the environment; the same agent and pins always give the same
//! inputs hash and the same spec. Layers go from rarely to often changing:
//! base (reused by digest), `tools` (fetched inputs, recipe files and links),
//! one `skill:<name>` per skill, then `config` (users, Claude Code settings,
//! prompt, files), so editing one skill changes exactly one layer.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::LockError;
use super::lockfile::{LockedBase, LockedInput};
use crate::manifest::tree::{Tree, TreeKind};
use crate::manifest::{AGENT_HOME, AGENT_UID, Agent, From, LocalInput, json};
use crate::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};
use crate::policy::{POLICY_LABEL, Policy};

/// Version of everything this module decides about the image (layer order,
/// generated files, config): bump it when the same inputs would build a
/// different image, so old lockfiles are seen as stale.
pub const BUILDER_FORMAT: u32 = 1;

/// Label naming where the agent's starting prompt sits in the image.
pub const PROMPT_LABEL: &str = "dev.bottle.prompt";
pub const PROMPT_PATH: &str = "home/agent/.bottle/prompt.md";

/// Environment that makes Claude Code behave inside a bottle: no updater (the
/// binary is pinned by the lock), no telemetry or other nonessential traffic
/// (the sidecar would block it anyway; this avoids retries and noise).
pub const CLAUDE_ENV: &[(&str, &str)] = &[
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
    ("DISABLE_FEEDBACK_COMMAND", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_UPDATES", "1"),
];

/// Where the runner mounts or uploads the user's project; trusted in Claude
/// Code's global config so the trust dialog does not stop a session.
pub const WORKSPACE: &str = "/workspace";

/// A fetched input with its pinned hash and cached file.
#[derive(Debug, Clone)]
pub struct PinnedFetch {
    pub fetch: crate::manifest::Fetch,
    /// Lowercase hex sha256.
    pub sha256: String,
    pub cached: std::path::PathBuf,
    /// Who pinned the hash (the recipe or the lockfile), for messages.
    pub pinned_by: String,
}

/// `sha256:<hex>` of the canonical JSON bytes of `v`.
pub fn sha256_json(v: &serde_json::Value) -> String {
    crate::oci::digest::sha256_digest(&crate::oci::digest::canonical_json(v))
}

/// Every input of the agent with its hash, sorted by name.
pub fn inputs(agent: &Agent, fetched: &[(String, String)]) -> Vec<LockedInput> {
    let local = |name: String, i: &LocalInput| LockedInput {
        name,
        source: Some(i.source.clone()),
        url: None,
        hash: i.tree.hash.clone(),
    };
    let mut out = vec![LockedInput {
        name: "manifest".into(),
        source: Some(agent.file.clone()),
        url: None,
        hash: sha256_json(&agent.canonical),
    }];
    if let Some(file) = &agent.recipe.file {
        out.push(LockedInput {
            name: "recipe".into(),
            source: Some(file.clone()),
            url: None,
            hash: sha256_json(&agent.recipe.canonical),
        });
    }
    for (dest, i) in &agent.recipe.files {
        out.push(local(format!("recipe-file:/{dest}"), i));
    }
    for (f, (url, hex)) in agent.recipe.fetch.iter().zip(fetched) {
        out.push(LockedInput {
            name: format!("fetch:/{}", f.dest),
            source: None,
            url: Some(url.clone()),
            hash: format!("sha256:{hex}"),
        });
    }
    for s in &agent.skills {
        out.push(local(format!("skill:{}", s.name), &s.input));
    }
    if let Some(p) = &agent.prompt {
        out.push(local("prompt".into(), p));
    }
    for (dest, i) in &agent.files {
        out.push(local(format!("file:/{dest}"), i));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `inputs` plus one `packages` input whose hash covers every Debian pin,
/// so a changed pin makes the lockfile stale; sorted by name.
pub fn with_packages(
    mut inputs: Vec<LockedInput>,
    packages: Option<&super::lockfile::LockedPackages>,
) -> Vec<LockedInput> {
    if let Some(p) = packages {
        inputs.push(LockedInput {
            name: "packages".into(),
            source: None,
            url: None,
            hash: sha256_json(&serde_json::to_value(p).expect("serializes")),
        });
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    inputs
}

/// Layers of pinned Debian packages, with the recipe's extra CA
/// certificates (`files` under `/usr/local/share/ca-certificates/*.crt`)
/// added to the bundle as `update-ca-certificates` would.
pub fn package_layers(
    agent: &Agent,
    pins: &super::lockfile::LockedPackages,
    cache: &super::fetch::FetchCache,
) -> Result<Vec<LayerSpec>, LockError> {
    const LOCAL_CA: &str = "usr/local/share/ca-certificates";
    let mut local = Vec::new();
    for (dest, input) in &agent.recipe.files {
        for e in &input.tree.entries {
            let path = if e.rel.is_empty() {
                dest.clone()
            } else {
                format!("{dest}/{}", e.rel)
            };
            if let (true, TreeKind::File { path: src, .. }) = (
                path.starts_with(LOCAL_CA) && path.ends_with(".crt"),
                &e.kind,
            ) {
                let b = std::fs::read(src).map_err(|e| LockError::io("cannot read", src, e))?;
                local.push((path, b));
            }
        }
    }
    Ok(crate::debian::layers(pins, cache, &local)?)
}

/// The hash that decides whether a lockfile is stale: over the builder
/// format, the base pin (with platform), the sidecar pin and every input.
pub fn inputs_hash(
    base: &LockedBase,
    sidecar_image: Option<&str>,
    inputs: &[LockedInput],
) -> String {
    let doc = serde_json::json!({
        "builder": BUILDER_FORMAT,
        "base": serde_json::to_value(base).expect("serializes"),
        "sidecar_image": sidecar_image,
        "inputs": inputs.iter().map(|i| serde_json::json!({
            "name": i.name, "source": i.source, "url": i.url, "hash": i.hash,
        })).collect::<Vec<_>>(),
    });
    sha256_json(&doc)
}

fn owner_of(path: &str) -> u64 {
    if path == AGENT_HOME || path.starts_with("home/agent/") {
        AGENT_UID
    } else {
        0
    }
}

fn dir(path: &str) -> Entry {
    let uid = owner_of(path);
    Entry {
        path: path.to_string(),
        mode: 0o755,
        uid,
        gid: uid,
        kind: EntryKind::Dir,
    }
}

fn bytes_file(path: &str, mode: u32, bytes: Vec<u8>) -> Entry {
    let uid = owner_of(path);
    Entry {
        path: path.to_string(),
        mode,
        uid,
        gid: uid,
        kind: EntryKind::File(FileSource::Bytes(bytes)),
    }
}

/// Parent folders of `path` (not `path` itself) that belong to the agent
/// user, so a layer never leaves one to the builder's root-owned default.
fn agent_parents(path: &str, out: &mut BTreeMap<String, Entry>) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        if owner_of(&acc) == AGENT_UID {
            out.entry(acc.clone()).or_insert_with(|| dir(&acc));
        }
    }
}

/// Entries for a local input placed at `dest` in the image.
fn tree_entries(dest: &str, tree: &Tree, out: &mut BTreeMap<String, Entry>) {
    agent_parents(dest, out);
    for e in &tree.entries {
        let path = if e.rel.is_empty() {
            dest.to_string()
        } else {
            format!("{dest}/{}", e.rel)
        };
        let uid = owner_of(&path);
        let kind = match &e.kind {
            TreeKind::Dir => EntryKind::Dir,
            TreeKind::File { path, .. } => EntryKind::File(FileSource::Path(path.clone())),
            TreeKind::Symlink(t) => EntryKind::Symlink(t.clone()),
        };
        out.insert(
            path.clone(),
            Entry {
                path,
                mode: e.mode,
                uid,
                gid: uid,
                kind,
            },
        );
    }
    if !tree.entries.iter().any(|e| e.rel.is_empty()) {
        out.entry(dest.to_string()).or_insert_with(|| dir(dest));
    }
}

/// The image to build for `agent` with these pins.
pub fn image_spec(
    agent: &Agent,
    base: &LockedBase,
    fetched: &[PinnedFetch],
    policy: &Policy,
) -> Result<ImageSpec, LockError> {
    image_spec_with(agent, base, fetched, Vec::new(), policy)
}

/// [`image_spec`] with the layers of the base's Debian packages (see
/// [`package_layers`]) placed first, before `tools`.
pub fn image_spec_with(
    agent: &Agent,
    base: &LockedBase,
    fetched: &[PinnedFetch],
    package_layers: Vec<LayerSpec>,
    policy: &Policy,
) -> Result<ImageSpec, LockError> {
    let recipe = &agent.recipe;
    let spec_base = match (&recipe.from, &base.digest) {
        (From::Scratch, _) => Base::Scratch,
        (From::Reference(r), Some(d)) => Base::Image {
            reference: r.clone(),
            manifest_digest: d.clone(),
        },
        (From::Reference(r), None) => {
            return Err(LockError::Internal(format!(
                "base `{r}` has no pinned digest"
            )));
        }
    };
    let scratch = spec_base == Base::Scratch;
    // A Debian base is merged-/usr: recipe paths under `/bin` etc. go
    // under `/usr` so they never shadow the `bin` → `usr/bin` link.
    let has_packages = !package_layers.is_empty();
    let mut layers = package_layers;

    // tools: fetched inputs, recipe files, links.
    let mut tools: BTreeMap<String, Entry> = BTreeMap::new();
    for p in fetched {
        if p.fetch.unpack {
            unpack_into(&p.fetch.dest, &p.cached, &p.fetch.url, &mut tools)?;
        } else {
            let uid = owner_of(&p.fetch.dest);
            tools.insert(
                p.fetch.dest.clone(),
                Entry {
                    path: p.fetch.dest.clone(),
                    mode: p.fetch.mode,
                    uid,
                    gid: uid,
                    kind: EntryKind::File(FileSource::Path(p.cached.clone())),
                },
            );
        }
    }
    for (dest, input) in &recipe.files {
        tree_entries(dest, &input.tree, &mut tools);
    }
    for (path, target) in &recipe.links {
        tools.insert(
            path.clone(),
            Entry {
                path: path.clone(),
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: EntryKind::Symlink(target.clone()),
            },
        );
    }
    if has_packages {
        tools = merged_usr(tools);
    }
    if !tools.is_empty() {
        layers.push(LayerSpec {
            name: "tools".into(),
            entries: tools.into_values().collect(),
        });
    }

    // One layer per skill.
    for s in &agent.skills {
        let mut m = BTreeMap::new();
        let dest = format!("{AGENT_HOME}/.claude/skills/{}", s.name);
        tree_entries(&dest, &s.input.tree, &mut m);
        layers.push(LayerSpec {
            name: format!("skill:{}", s.name),
            entries: m.into_values().collect(),
        });
    }

    // config: users, Claude Code settings, prompt, files.
    let mut cfg: BTreeMap<String, Entry> = BTreeMap::new();
    let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                  agent:x:1000:1000:agent:/home/agent:/bin/sh\n\
                  nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    let group = "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n";
    cfg.insert(
        "etc/passwd".into(),
        bytes_file("etc/passwd", 0o644, passwd.into()),
    );
    cfg.insert(
        "etc/group".into(),
        bytes_file("etc/group", 0o644, group.into()),
    );
    if scratch {
        cfg.insert(
            "tmp".into(),
            Entry {
                mode: 0o1777,
                ..dir("tmp")
            },
        );
    }
    let ws = WORKSPACE.trim_start_matches('/');
    cfg.insert(
        ws.into(),
        Entry {
            uid: AGENT_UID,
            gid: AGENT_UID,
            ..dir(ws)
        },
    );
    let settings = claude_settings();
    let settings_path = format!("{AGENT_HOME}/.claude/settings.json");
    agent_parents(&settings_path, &mut cfg);
    cfg.insert(
        settings_path.clone(),
        bytes_file(&settings_path, 0o644, settings),
    );
    let global_path = format!("{AGENT_HOME}/.claude.json");
    cfg.insert(
        global_path.clone(),
        bytes_file(&global_path, 0o644, claude_global_config()),
    );
    if let Some(p) = &agent.prompt {
        tree_entries(PROMPT_PATH, &p.tree, &mut cfg);
    }
    for (dest, input) in &agent.files {
        tree_entries(dest, &input.tree, &mut cfg);
    }
    layers.push(LayerSpec {
        name: "config".into(),
        entries: cfg.into_values().collect(),
    });

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/home/agent/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            .into(),
    );
    env.insert("HOME".into(), "/home/agent".into());
    env.insert("USER".into(), "agent".into());
    for (k, v) in CLAUDE_ENV {
        env.insert((*k).into(), (*v).into());
    }
    for (k, v) in &recipe.env {
        env.insert(k.clone(), v.clone());
    }
    let mut labels = BTreeMap::new();
    labels.insert(POLICY_LABEL.to_string(), policy.to_canonical_json());
    if agent.prompt.is_some() {
        labels.insert(PROMPT_LABEL.to_string(), format!("/{PROMPT_PATH}"));
    }
    Ok(ImageSpec {
        base: spec_base,
        layers,
        config: ConfigSpec {
            user: recipe.user.clone().unwrap_or_else(|| "1000:1000".into()),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            entrypoint: recipe.entrypoint.clone().unwrap_or_default(),
            cmd: recipe.cmd.clone().unwrap_or_default(),
            working_dir: recipe
                .workdir
                .clone()
                .unwrap_or_else(|| "/home/agent".into()),
            labels,
        },
        mtime: 0,
    })
}

/// Entries moved to where a merged-/usr Debian base keeps them.
fn merged_usr(entries: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    entries
        .into_values()
        .map(|e| {
            let path = crate::debian::merged_usr(&e.path);
            (path.clone(), Entry { path, ..e })
        })
        .collect()
}

/// `~/.claude/settings.json`: full permissions inside the bottle (the
/// sandbox is the boundary), no bypass-mode confirmation, and the same
/// no-update/no-telemetry environment as the image config so background
/// processes get it too.
pub fn claude_settings() -> Vec<u8> {
    let env: serde_json::Map<String, serde_json::Value> = CLAUDE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
        .collect();
    let v = serde_json::json!({
        "env": env,
        "permissions": { "defaultMode": "bypassPermissions" },
        "skipDangerousModePermissionPrompt": true,
    });
    let mut out = serde_json::to_vec_pretty(&json::canonical(&v)).expect("serializes");
    out.push(b'\n');
    out
}

/// `~/.claude.json`: onboarding done, bypass mode accepted, the workspace
/// trusted, so a session starts straight into work.
pub fn claude_global_config() -> Vec<u8> {
    let v = serde_json::json!({
        "bypassPermissionsModeAccepted": true,
        "hasCompletedOnboarding": true,
        "projects": { WORKSPACE: { "hasTrustDialogAccepted": true } },
    });
    let mut out = serde_json::to_vec_pretty(&json::canonical(&v)).expect("serializes");
    out.push(b'\n');
    out
}

/// Unpack a tar (gzip-compressed or not) under `dest`, keeping regular
/// files, folders and symlinks; anything else, or a path leaving `dest`, is
/// an error naming the URL.
fn unpack_into(
    dest: &str,
    archive: &Path,
    url: &str,
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), LockError> {
    let bad = |reason: String| LockError::Unpack {
        url: url.to_string(),
        reason,
    };
    let mut f =
        std::fs::File::open(archive).map_err(|e| LockError::io("cannot read", archive, e))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .map_err(|e| LockError::io("cannot read", archive, e))?;
    drop(f);
    let f = std::fs::File::open(archive).map_err(|e| LockError::io("cannot read", archive, e))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    out.entry(dest.to_string()).or_insert_with(|| dir(dest));
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some(raw) = raw.to_str().map(str::to_string) else {
            return Err(bad("an entry name is not UTF-8".into()));
        };
        let mut parts = Vec::new();
        for p in raw.split('/') {
            match p {
                "" | "." => {}
                ".." => return Err(bad(format!("entry `{raw}` leaves the folder"))),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            continue;
        }
        let rel = parts.join("/");
        let path = format!("{dest}/{rel}");
        let uid = owner_of(&path);
        let mode = entry.header().mode().unwrap_or(0o644);
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(e.to_string()))?;
                EntryKind::File(FileSource::Bytes(buf))
            }
            tar::EntryType::Symlink => {
                let t = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .and_then(|t| t.to_str().map(str::to_string))
                    .ok_or_else(|| bad(format!("symlink `{raw}` has no UTF-8 target")))?;
                if !crate::manifest::tree::stays_inside(&rel, &t) {
                    return Err(bad(format!("symlink `{raw}` -> `{t}` leaves the folder")));
                }
                EntryKind::Symlink(t)
            }
            other => {
                return Err(bad(format!(
                    "entry `{raw}` has type {other:?}; only files, folders and symlinks are unpacked"
                )));
            }
        };
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) => 0o777,
            EntryKind::File(_) if mode & 0o111 != 0 => 0o755,
            EntryKind::File(_) => 0o644,
        };
        out.insert(
            path.clone(),
            Entry {
                path,
                mode,
                uid,
                gid: uid,
                kind,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_agent;
    use std::fs;

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("images")).unwrap();
        fs::create_dir_all(r.join("agents/a/skills/s1")).unwrap();
        fs::create_dir_all(r.join("agents/a/skills/s2")).unwrap();
        fs::write(
            r.join("images/base.json"),
            r#"{"schema": 1, "from": "scratch", "links": {"/bin/sh": "busybox"}, "env": {"LANG": "C.UTF-8"}}"#,
        )
        .unwrap();
        for s in ["s1", "s2"] {
            fs::write(
                r.join(format!("agents/a/skills/{s}/SKILL.md")),
                format!("---\nname: {s}\ndescription: d\n---\n"),
            )
            .unwrap();
        }
        fs::write(r.join("agents/a/p.md"), "go\n").unwrap();
        fs::write(
            r.join("agents/a/bottle.json"),
            r#"{"schema": 1, "image": "base", "skills": ["skills/s2", "skills/s1"], "sidecar": "builtin", "prompt": "p.md"}"#,
        )
        .unwrap();
        d
    }

    fn scratch() -> LockedBase {
        LockedBase {
            reference: "scratch".into(),
            digest: None,
            platform: "linux/amd64".into(),
        }
    }

    #[test]
    fn layers_in_order_with_agent_ownership_and_sandbox_settings() {
        let d = project();
        let a = load_agent(d.path(), "a").unwrap();
        let policy = a.policy(None);
        let spec = image_spec(&a, &scratch(), &[], &policy).unwrap();
        let names: Vec<&str> = spec.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["tools", "skill:s2", "skill:s1", "config"]);
        let skill = &spec.layers[1];
        assert!(skill.entries.iter().all(|e| e.uid == AGENT_UID));
        assert!(
            skill
                .entries
                .iter()
                .any(|e| e.path == "home/agent/.claude/skills/s2/SKILL.md")
        );
        let cfg = &spec.layers[3];
        let settings = cfg
            .entries
            .iter()
            .find(|e| e.path == "home/agent/.claude/settings.json")
            .unwrap();
        let EntryKind::File(FileSource::Bytes(b)) = &settings.kind else {
            panic!("settings not inline")
        };
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["permissions"]["defaultMode"], "bypassPermissions");
        assert_eq!(v["env"]["DISABLE_AUTOUPDATER"], "1");
        assert!(cfg.entries.iter().any(|e| e.path == "etc/passwd"));
        assert!(cfg.entries.iter().any(|e| e.path == PROMPT_PATH));
        assert_eq!(spec.config.user, "1000:1000");
        assert!(spec.config.env.contains(&"LANG=C.UTF-8".to_string()));
        assert!(
            spec.config
                .env
                .contains(&"DISABLE_AUTOUPDATER=1".to_string())
        );
        assert_eq!(spec.config.labels[POLICY_LABEL], policy.to_canonical_json());
        // Same inputs, same spec.
        assert_eq!(image_spec(&a, &scratch(), &[], &policy).unwrap(), spec);
    }

    #[test]
    fn a_package_base_moves_recipe_paths_under_usr() {
        let d = project();
        let a = load_agent(d.path(), "a").unwrap();
        let policy = a.policy(None);
        let debs = vec![LayerSpec {
            name: "debian:0".into(),
            entries: vec![],
        }];
        let spec = image_spec_with(&a, &scratch(), &[], debs, &policy).unwrap();
        let tools = spec.layers.iter().find(|l| l.name == "tools").unwrap();
        assert!(tools.entries.iter().any(|e| e.path == "usr/bin/sh"));
        assert!(!tools.entries.iter().any(|e| e.path.starts_with("bin")));
        // Without packages the recipe's paths stay as written.
        let plain = image_spec(&a, &scratch(), &[], &policy).unwrap();
        assert!(plain.layers[0].entries.iter().any(|e| e.path == "bin/sh"));
    }

    #[test]
    fn inputs_hash_follows_each_input() {
        let d = project();
        let a = load_agent(d.path(), "a").unwrap();
        let i = inputs(&a, &[]);
        let names: Vec<&str> = i.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            ["manifest", "prompt", "recipe", "skill:s1", "skill:s2"]
        );
        let h = inputs_hash(&scratch(), None, &i);
        fs::write(d.path().join("agents/a/skills/s1/more.md"), "x").unwrap();
        let b = load_agent(d.path(), "a").unwrap();
        let j = inputs(&b, &[]);
        assert_ne!(inputs_hash(&scratch(), None, &j), h);
        let changed: Vec<&str> = i
            .iter()
            .zip(&j)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.name.as_str())
            .collect();
        assert_eq!(changed, ["skill:s1"]);
        let mut arm = scratch();
        arm.platform = "linux/arm64".into();
        assert_ne!(
            inputs_hash(&arm, None, &j),
            inputs_hash(&scratch(), None, &j)
        );
    }

    fn targz(entries: &[(&str, &[u8])], link: Option<(&str, &str)>) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(if path.contains("bin/") { 0o700 } else { 0o600 });
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        if let Some((path, target)) = link {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpack_keeps_files_and_links_inside_and_normalizes_modes() {
        let d = tempfile::tempdir().unwrap();
        let ar = d.path().join("a.tar.gz");
        fs::write(
            &ar,
            targz(
                &[("./bin/tool", b"x"), ("share/doc.txt", b"d")],
                Some(("bin/t", "tool")),
            ),
        )
        .unwrap();
        let mut out = BTreeMap::new();
        unpack_into("opt/tool", &ar, "file:///a.tar.gz", &mut out).unwrap();
        let tool = &out["opt/tool/bin/tool"];
        assert_eq!(tool.mode, 0o755);
        assert!(matches!(&tool.kind, EntryKind::File(FileSource::Bytes(b)) if b == b"x"));
        assert_eq!(out["opt/tool/share/doc.txt"].mode, 0o644);
        assert_eq!(
            out["opt/tool/bin/t"].kind,
            EntryKind::Symlink("tool".into())
        );

        fs::write(&ar, targz(&[("ok", b"x")], Some(("l", "../../etc/passwd")))).unwrap();
        let e = unpack_into("opt/tool", &ar, "file:///a.tar.gz", &mut BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("leaves the folder"), "{e}");
    }
}
