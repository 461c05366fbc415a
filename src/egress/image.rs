//! The builtin sidecar image: the running `bottle` executable plus exactly
//! the shared objects it needs, in deterministic layers, loaded into the
//! engine with `docker load` (bollard `import_image`).
//!
//! Invariants:
//! - Reproducible for a given binary: the layers hold only the ELF
//!   interpreter, the `DT_NEEDED` closure of the executable (found the way
//!   the loader finds them, read from this machine's files) and the
//!   executable, all with fixed modes, owner root and mtime 0 (`oci` builder).
//! - Runs as a non-root user ([`SIDECAR_USER`]) and needs nothing writable,
//!   so it is meant to run with a read-only rootfs and every capability
//!   dropped.
//! - Its image ID is its config digest; [`ensure_image_from`] checks that
//!   after loading and skips the load when the engine already has that ID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use futures_util::StreamExt;

use super::EgressError;
use crate::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};
use crate::oci::{BlobStore, BuiltImage};

/// Numeric user and group the proxy runs as (the conventional "nonroot").
pub const SIDECAR_USER: &str = "65532:65532";

/// Where the executable lives in the image.
pub const EXE_PATH: &str = "/usr/local/bin/bottle";

/// Repository name the image is loaded under (tag = short config digest).
pub const IMAGE_REPO: &str = "bottle/egress-builtin";

/// Label marking the image as bottle's builtin sidecar.
pub const SIDECAR_LABEL: &str = "dev.bottle.sidecar";

/// Directories searched for `DT_NEEDED` libraries, in the loader's order for
/// a binary without RPATH (multiarch first, as Debian's ld.so.conf has it).
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What goes into the image: (path inside the image, file on this machine).
pub fn runtime_files(exe: &Path) -> Result<Vec<(String, PathBuf)>, EgressError> {
    let mut files = BTreeMap::new();
    let elf = read_elf(exe)?;
    if let Some(interp) = &elf.interp {
        files.insert(interp.clone(), real(Path::new(interp))?);
    }
    // Each library is looked up in its dependent's RUNPATH first (how a Nix
    // build finds its glibc), then in the system directories.
    let origin = |p: &Path| {
        p.parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    };
    let expand = |dirs: &[String], of: &Path| -> Vec<String> {
        dirs.iter()
            .map(|d| d.replace("$ORIGIN", &origin(of)))
            .collect()
    };
    let mut todo: Vec<(String, Vec<String>)> = elf
        .needed
        .iter()
        .map(|n| (n.clone(), expand(&elf.runpath, exe)))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some((name, runpath)) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let found = runpath
            .iter()
            .map(String::as_str)
            .chain(LIB_DIRS.iter().copied())
            .map(|d| Path::new(d).join(&name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                EgressError::Image(format!(
                    "{} needs {name}, which is in none of {LIB_DIRS:?}",
                    exe.display()
                ))
            })?;
        let image_path = found.display().to_string();
        let lib = read_elf(&found)?;
        let lib_runpath = expand(&lib.runpath, &found);
        todo.extend(lib.needed.into_iter().map(|n| (n, lib_runpath.clone())));
        files.insert(image_path, real(&found)?);
    }
    files.insert(EXE_PATH.to_string(), real(exe)?);
    Ok(files.into_iter().collect())
}

fn real(p: &Path) -> Result<PathBuf, EgressError> {
    std::fs::canonicalize(p)
        .map_err(|e| EgressError::Image(format!("cannot resolve {}: {e}", p.display())))
}

/// The image spec for the builtin sidecar around `exe`.
pub fn image_spec(exe: &Path) -> Result<ImageSpec, EgressError> {
    let files = runtime_files(exe)?;
    let mut runtime = Vec::new();
    let mut program = Vec::new();
    for (path, src) in files {
        let entry = Entry {
            path: path.trim_start_matches('/').to_string(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            kind: EntryKind::File(FileSource::Path(src)),
        };
        // The libraries change with the OS, the executable with every build:
        // two layers so a rebuild of bottle reuses the first.
        if path == EXE_PATH {
            program.push(entry);
        } else {
            runtime.push(entry);
        }
    }
    program.push(Entry {
        path: "etc/bottle".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        kind: EntryKind::Dir,
    });
    let mut labels = BTreeMap::new();
    labels.insert(SIDECAR_LABEL.to_string(), "builtin".to_string());
    Ok(ImageSpec {
        base: Base::Scratch,
        layers: vec![
            LayerSpec {
                name: "runtime".into(),
                entries: runtime,
            },
            LayerSpec {
                name: "bottle".into(),
                entries: program,
            },
        ],
        config: ConfigSpec {
            user: SIDECAR_USER.into(),
            env: vec![],
            entrypoint: vec![EXE_PATH.into(), "proxy".into()],
            cmd: vec!["--config".into(), super::CONFIG_PATH_IN_CONTAINER.into()],
            working_dir: "/".into(),
            labels,
        },
        mtime: 0,
    })
}

/// Build the image for `exe` into `store`.
pub fn build_image(exe: &Path, store: &BlobStore) -> Result<BuiltImage, EgressError> {
    let spec = image_spec(exe)?;
    crate::oci::build(&spec, store).map_err(EgressError::Build)
}

/// Build the builtin sidecar image from the running executable, load it
/// into the engine unless it is already there, and return its image ID
/// (`sha256:…`, equal to the config digest).
pub async fn ensure_builtin_image(docker: &Docker) -> Result<String, EgressError> {
    let exe = std::env::current_exe()
        .map_err(|e| EgressError::Image(format!("cannot find the running executable: {e}")))?;
    let store = BlobStore::open_default().map_err(EgressError::Build)?;
    // Many runs starting at once with a new binary would each build and
    // load the same image; one does while the others wait, then find its
    // layers in the store and the image in the engine.
    let _lock = BuildLock::take(store.root()).await;
    ensure_image_from(docker, &exe, &store).await
}

/// An exclusive `flock` on `<store>/builtin-sidecar.lock`, released on drop
/// (and by the kernel if the process dies). Best effort: without it the
/// build is still correct, only repeated.
struct BuildLock {
    _file: Option<std::fs::File>,
}

impl BuildLock {
    async fn take(store_root: &Path) -> BuildLock {
        let path = store_root.join("builtin-sidecar.lock");
        let file = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ok()?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).ok()?;
            Some(f)
        })
        .await
        .ok()
        .flatten();
        BuildLock { _file: file }
    }
}

/// [`ensure_builtin_image`] for a given executable and blob store.
pub async fn ensure_image_from(
    docker: &Docker,
    exe: &Path,
    store: &BlobStore,
) -> Result<String, EgressError> {
    let image = build_image(exe, store)?;
    let id = image.config_digest.clone();
    if docker.inspect_image(&id).await.is_ok() {
        return Ok(id);
    }
    let tag = image_tag(&id);
    let bytes = crate::oci::archive::archive_bytes(&image, store, std::slice::from_ref(&tag))
        .map_err(EgressError::Build)?;
    let opts = bollard::query_parameters::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut s = docker.import_image(opts, bollard::body_full(bytes.into()), None);
    while let Some(item) = s.next().await {
        let info = item.map_err(|e| EgressError::Engine(format!("docker load of {tag}: {e}")))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(EgressError::Engine(format!("docker load of {tag}: {err}")));
        }
    }
    let inspect = docker
        .inspect_image(&tag)
        .await
        .map_err(|e| EgressError::Engine(format!("inspect {tag} after loading: {e}")))?;
    match inspect.id {
        Some(got) if got == id => Ok(id),
        other => Err(EgressError::Image(format!(
            "engine reports image ID {other:?} for {tag}, expected the config digest {id}"
        ))),
    }
}

/// `bottle/egress-builtin:<first 12 hex of the config digest>`.
pub fn image_tag(config_digest: &str) -> String {
    let hex = config_digest.trim_start_matches("sha256:");
    format!("{IMAGE_REPO}:{}", &hex[..hex.len().min(12)])
}

/// The parts of an ELF file the loader uses to find libraries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or `DT_RPATH`) directories, e.g. a Nix store path.
    pub runpath: Vec<String>,
}

fn read_elf(path: &Path) -> Result<ElfDeps, EgressError> {
    let bytes = std::fs::read(path)
        .map_err(|e| EgressError::Image(format!("cannot read {}: {e}", path.display())))?;
    parse_elf(&bytes).map_err(|e| EgressError::Image(format!("{}: {e}", path.display())))
}

/// Parse a little-endian ELF64 file's `PT_INTERP` and `DT_NEEDED` entries.
/// Little-endian reads at file offsets, each failing as "truncated".
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn get<const N: usize>(&self, o: usize) -> Result<[u8; N], String> {
        self.0
            .get(o..o.saturating_add(N))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| "truncated".to_string())
    }
    fn u16(&self, o: usize) -> Result<u64, String> {
        Ok(u16::from_le_bytes(self.get(o)?) as u64)
    }
    fn u32(&self, o: usize) -> Result<u64, String> {
        Ok(u32::from_le_bytes(self.get(o)?) as u64)
    }
    fn u64(&self, o: usize) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.get(o)?))
    }
}

/// What the program headers say: the interpreter, the dynamic section
/// (offset, size) and the loaded segments (vaddr, offset, size).
type ProgramHeaders = (Option<String>, Option<(usize, usize)>, Vec<(u64, u64, u64)>);

fn program_headers(r: &Bytes<'_>) -> Result<ProgramHeaders, String> {
    let b = r.0;
    let phoff = r.u64(0x20)? as usize;
    let phentsize = r.u16(0x36)? as usize;
    let phnum = r.u16(0x38)? as usize;
    let mut interp = None;
    let mut dynamic = None;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = r.u32(ph)?;
        let offset = r.u64(ph + 8)?;
        let vaddr = r.u64(ph + 16)?;
        let filesz = r.u64(ph + 32)?;
        match kind {
            1 => loads.push((vaddr, offset, filesz)),
            2 => dynamic = Some((offset as usize, filesz as usize)),
            3 => {
                let raw = b
                    .get(offset as usize..(offset + filesz) as usize)
                    .ok_or("PT_INTERP out of range")?;
                let s = raw.split(|&c| c == 0).next().unwrap_or_default();
                interp = Some(String::from_utf8_lossy(s).to_string());
            }
            _ => {}
        }
    }
    Ok((interp, dynamic, loads))
}

pub fn parse_elf(b: &[u8]) -> Result<ElfDeps, String> {
    let r = Bytes(b);
    if b.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a little-endian 64-bit ELF file".into());
    }
    let (interp, dynamic, loads) = program_headers(&r)?;
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(ElfDeps {
            interp,
            ..ElfDeps::default()
        });
    };
    let mut strtab = None;
    let mut needed_offsets = Vec::new();
    let mut runpath_offsets = Vec::new();
    for i in 0..dyn_size / 16 {
        let tag = r.u64(dyn_off + i * 16)?;
        let val = r.u64(dyn_off + i * 16 + 8)?;
        match tag {
            0 => break,
            1 => needed_offsets.push(val),
            5 => strtab = Some(val),
            15 | 29 => runpath_offsets.push(val),
            _ => {}
        }
    }
    let strtab = strtab.ok_or("no DT_STRTAB")?;
    let strtab_off = loads
        .iter()
        .find(|(vaddr, _, size)| strtab >= *vaddr && strtab < vaddr + size)
        .map(|(vaddr, off, _)| strtab - vaddr + off)
        .ok_or("DT_STRTAB not in a PT_LOAD segment")? as usize;
    let string_at = |o: u64| -> Result<String, String> {
        let rest = b
            .get(strtab_off + o as usize..)
            .ok_or("dynamic string out of range")?;
        let s = rest.split(|&c| c == 0).next().unwrap_or_default();
        Ok(String::from_utf8_lossy(s).to_string())
    };
    let mut needed = Vec::new();
    for o in needed_offsets {
        let name = string_at(o)?;
        if name.contains('/') || name.is_empty() {
            return Err(format!("unexpected DT_NEEDED `{name}`"));
        }
        needed.push(name);
    }
    let mut runpath = Vec::new();
    for o in runpath_offsets {
        runpath.extend(
            string_at(o)?
                .split(':')
                .filter(|d| !d.is_empty())
                .map(String::from),
        );
    }
    Ok(ElfDeps {
        interp,
        needed,
        runpath,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loader_and_libc_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let deps = read_elf(&exe).unwrap();
        assert!(
            deps.interp
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{deps:?}"
        );
        assert!(
            deps.needed.iter().any(|n| n.starts_with("libc.so")),
            "{deps:?}"
        );
        let files = runtime_files(&exe).unwrap();
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&EXE_PATH));
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("ld-linux")), "{paths:?}");
    }

    #[test]
    fn rejects_non_elf() {
        assert!(parse_elf(b"#!/bin/sh\n").is_err());
        assert!(parse_elf(b"\x7fELF\x02\x01").is_err());
    }

    #[test]
    fn spec_is_non_root_and_runs_the_proxy() {
        let exe = std::env::current_exe().unwrap();
        let spec = image_spec(&exe).unwrap();
        assert_eq!(spec.config.user, SIDECAR_USER);
        assert_eq!(spec.config.entrypoint, vec![EXE_PATH, "proxy"]);
        assert_eq!(spec.config.cmd, vec!["--config", "/etc/bottle/egress.yaml"]);
        assert_eq!(spec.mtime, 0);
    }
}
