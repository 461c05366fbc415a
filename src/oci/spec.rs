//! The seam between resolution (`lock`) and image building (`oci`): a pure
//! description of an image. `lock` turns a manifest plus its pinned inputs
//! into an [`ImageSpec`]; `oci` turns the spec into bytes and digests. The
//! same spec always gives the same manifest digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// `sha256:<64 hex>`.
pub type Digest = String;

/// One image to build: base layers reused by digest, then one new layer per
/// group, lowest (rarely changing) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub base: Base,
    pub layers: Vec<LayerSpec>,
    pub config: ConfigSpec,
    /// Modification time for every entry (seconds since epoch; 0 unless the
    /// lock pins SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// No base layers.
    Scratch,
    /// A base image already in the blob store, pinned by manifest digest; its
    /// layers are reused as they are (never unpacked or recompressed).
    Image {
        reference: String,
        manifest_digest: Digest,
    },
}

/// One layer, named so a `check` mismatch can say which layer differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// e.g. "base", "tools", "skill:review", "config".
    pub name: String,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image, relative, no leading `/`, `/`-separated, no
    /// `.`/`..` components (e.g. `home/agent/.claude/skills/review/SKILL.md`).
    pub path: String,
    /// Permission bits only (e.g. 0o644, 0o755); normalized by the builder.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(FileSource),
    /// Target is checked to stay inside the image root.
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Bytes(Vec<u8>),
    /// Read at build time; its content hash was pinned by the lock.
    Path(PathBuf),
}

/// The runtime config the image carries (OCI image config `config` object).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigSpec {
    pub user: String,
    /// `KEY=value`, order preserved.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// Includes `dev.bottle.policy` (see `policy`).
    pub labels: BTreeMap<String, String>,
}
