//! Base images from pinned Debian packages, the way apko builds them from
//! APKs: resolve a recipe's `packages` against a signed archive, pin every
//! `.deb` by hash in the lockfile, and unpack them into layers.
//!
//! Trust follows apt: the suite's `InRelease` must carry a signature by a
//! key of the keyring its source names ([`release`]); the `Packages` index
//! must hash to what the signed `InRelease` lists; each `.deb` must hash to
//! what the index lists at lock time, and to its pin at every later build.
//! Only the archive's own protocol is used (`dists/<suite>/InRelease`, the
//! index it lists, `pool/…` files), and no archive host is built in: URIs
//! come from apt's configuration ([`sources`]) or the recipe.
//!
//! Modules: [`sources`] (apt config), [`release`] (signature, hashes,
//! expiry), [`index`] (deb822, `Packages`), [`version`] (dpkg order),
//! [`resolve`] (closure), [`deb`] (unpack), [`rootfs`] (layers and what
//! maintainer scripts would have made), [`archive`] (network, cache, pins).

pub(crate) mod archive;
pub(crate) mod deb;
pub(crate) mod index;
pub(crate) mod release;
pub(crate) mod resolve;
pub(crate) mod rootfs;
pub(crate) mod sources;
pub(crate) mod version;

pub use archive::{layers, pin};

/// Where a recipe path lands in a merged-/usr Debian base.
pub fn merged_usr(path: &str) -> String {
    deb::merged_usr(path)
}

use crate::error::{Classify, ExitKind};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error(
        "{file}: {problem}\n  help: fix the apt source, or name an archive in the recipe's `packages.archive`"
    )]
    Sources { file: String, problem: String },
    #[error(
        "keyring {file}: {problem}\n  help: the source's Signed-By must name a readable OpenPGP keyring (for Debian: install debian-archive-keyring)"
    )]
    Keyring { file: String, problem: String },
    #[error(
        "{url}: signature refused: {problem}\n  help: the archive is not signed by a key its source trusts; check the mirror and the Signed-By keyring"
    )]
    Signature { url: String, problem: String },
    #[error("{url}: {problem}")]
    Release { url: String, problem: String },
    #[error(
        "{url}: the suite expired (Valid-Until: {valid_until})\n  help: the mirror serves stale metadata; use an up-to-date mirror"
    )]
    Expired { url: String, valid_until: String },
    #[error("{file}: {problem}")]
    Index { file: String, problem: String },
    #[error(
        "{url}: the signed InRelease of {suite} does not list `{path}` for this architecture and component"
    )]
    NoIndex {
        url: String,
        suite: String,
        path: String,
    },
    #[error(
        "package `{name}`: {problem}\n  help: check the name in the recipe's `packages.include` (`apt-cache policy {name}`)"
    )]
    Request { name: String, problem: String },
    #[error("unresolvable dependency: {chain}: nothing in the archive satisfies it")]
    Missing { chain: String },
    #[error("conflict: {chain}: {problem}")]
    Conflict { chain: String, problem: String },
    #[error(".deb of {package}: {problem}")]
    Deb { package: String, problem: String },
    #[error(
        "{package} {version}: `{path}` is neither in the fetch cache nor served by the archive ({reason})\n  help: the archive dropped this version; restore the fetch cache, or run `bottle lock --update`"
    )]
    NotServed {
        package: String,
        version: String,
        path: String,
        reason: String,
    },
    #[error(
        "the lockfile pins packages from suite `{suite}`, but no apt source or recipe archive serves it\n  help: add the suite to the apt sources, or run `bottle lock --update`"
    )]
    NoSuite { suite: String },
    #[error("platform `{0}` has no Debian architecture\n  help: set `packages.arch` in the recipe")]
    Platform(String),
}

impl Classify for DebError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            DebError::Keyring { .. } | DebError::NotServed { .. } | DebError::NoSuite { .. } => {
                ExitKind::Environment
            }
            _ => ExitKind::BadInput,
        }
    }
}

/// Debian architecture of an OCI platform (`linux/amd64` → `amd64`).
pub(crate) fn deb_arch(platform: &str) -> Result<String, DebError> {
    let p: Vec<&str> = platform.split('/').collect();
    let a = match (p.get(1).copied(), p.get(2).copied()) {
        (Some("amd64"), _) => "amd64",
        (Some("arm64"), _) => "arm64",
        (Some("arm"), Some("v7")) => "armhf",
        (Some("arm"), _) => "armel",
        (Some("386"), _) => "i386",
        (Some("ppc64le"), _) => "ppc64el",
        (Some("s390x"), _) => "s390x",
        (Some("riscv64"), _) => "riscv64",
        _ => return Err(DebError::Platform(platform.to_string())),
    };
    Ok(a.to_string())
}

#[cfg(test)]
mod tests;
