//! The network side: fetch and verify each suite's `InRelease` and
//! `Packages` index, resolve, download the chosen `.deb` files into the
//! fetch cache, and later fetch them again by their pinned path only.
//!
//! Invariants: pins change only when the recipe's `packages` (or the
//! architecture) changed, or with `--update`; a rebuild reads nothing but
//! the pins (the cache first, then `<uri>/<path>` checked against the pinned
//! SHA-256); indexes and `.deb` files go through the content-addressed
//! fetch cache with the hash the signed chain gives, so a mismatch is
//! refused before anything is used.

use std::io::Read;
use std::path::PathBuf;

use futures_util::{StreamExt, TryStreamExt};

use super::index::{Package, parse_packages};
use super::resolve::{Request, resolve};
use super::sources::{Source, host_sources};
use super::{DebError, deb_arch, release, rootfs};
use crate::lock::LockError;
use crate::lock::fetch::FetchCache;
use crate::lock::lockfile::{LockedPackage, LockedPackages, LockedSuite};
use crate::manifest::Packages;
use crate::oci::spec::LayerSpec;

/// Downloads in flight at once.
const PARALLEL: usize = 8;

fn sources_for(p: &Packages) -> Result<Vec<Source>, DebError> {
    match &p.archive {
        Some(a) => Ok(a
            .suites
            .iter()
            .map(|s| Source {
                uri: a.uri.trim_end_matches('/').to_string(),
                suite: s.clone(),
                components: a.components.clone(),
                signed_by: vec![PathBuf::from(&a.signed_by)],
                origin: "the recipe's packages.archive".into(),
            })
            .collect()),
        None => host_sources(),
    }
}

/// The architecture the recipe asks for, else the platform's.
pub(crate) fn arch_for(p: &Packages, platform: &str) -> Result<String, DebError> {
    match &p.arch {
        Some(a) => Ok(a.clone()),
        None => deb_arch(platform),
    }
}

/// Hash of what decides the pins: the `packages` object and the arch.
pub(crate) fn request_hash(p: &Packages, arch: &str) -> String {
    crate::lock::resolve::sha256_json(&serde_json::json!({
        "packages": p.canonical,
        "arch": arch,
    }))
}

async fn get(url: &str, offline: bool) -> Result<Vec<u8>, LockError> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|e| LockError::FetchLocal {
            url: url.to_string(),
            source: e,
        });
    }
    if offline {
        return Err(LockError::Offline {
            what: format!("downloading {url}"),
        });
    }
    let net = |reason: String| LockError::Network {
        what: format!("download {url}"),
        reason,
    };
    let resp = reqwest::Client::builder()
        .user_agent(concat!("bottle/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| net(e.to_string()))?
        .get(url)
        .send()
        .await
        .map_err(|e| net(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(net(format!("HTTP {}", resp.status().as_u16())));
    }
    Ok(resp.bytes().await.map_err(|e| net(e.to_string()))?.to_vec())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verified packages of one source (all its components) for `arch`.
async fn load_source(
    s: &Source,
    arch: &str,
    cache: &FetchCache,
    offline: bool,
) -> Result<(LockedSuite, Vec<Package>), LockError> {
    let url = format!("{}/dists/{}/InRelease", s.uri, s.suite);
    let bytes = get(&url, offline).await?;
    let keys = release::load_keys(&s.signed_by)?;
    let text = release::verify(&bytes, &keys, &url)?;
    let rel = release::parse(&text, &url, now())?;
    let mut pkgs = Vec::new();
    for comp in &s.components {
        let base = format!("{comp}/binary-{arch}/Packages");
        let Some((path, (sha, _))) = ["xz", "gz", ""].iter().find_map(|ext| {
            let p = if ext.is_empty() {
                base.clone()
            } else {
                format!("{base}.{ext}")
            };
            rel.sha256.get(&p).map(|h| (p, h.clone()))
        }) else {
            return Err(DebError::NoIndex {
                url,
                suite: s.suite.clone(),
                path: base,
            }
            .into());
        };
        let index_url = format!("{}/dists/{}/{path}", s.uri, s.suite);
        let hex = cache
            .ensure(
                &index_url,
                Some(&sha),
                &format!("the signed {url}"),
                offline,
            )
            .await?;
        let raw = std::fs::read(cache.path(&hex))
            .map_err(|e| LockError::io("cannot read", &cache.path(&hex), e))?;
        let text = decompress_index(&path, &raw).map_err(|e| DebError::Index {
            file: index_url.clone(),
            problem: e,
        })?;
        let origin = format!("{}/{path}", s.suite);
        pkgs.extend(parse_packages(&text, arch, &s.suite, &origin)?);
    }
    let suite = LockedSuite {
        suite: s.suite.clone(),
        codename: rel.codename,
        date: rel.date,
    };
    Ok((suite, pkgs))
}

fn decompress_index(path: &str, raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::new();
    if path.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(raw), &mut out)
            .map_err(|e| e.to_string())?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
    } else {
        out = raw.to_vec();
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8".to_string())
}

/// The pins for a recipe's `packages`: `old` when the request is unchanged
/// and no update is asked, else a fresh resolution (with every `.deb`
/// downloaded and checked against its index).
pub async fn pin(
    p: &Packages,
    platform: &str,
    old: Option<&LockedPackages>,
    update: bool,
    cache: &FetchCache,
    offline: bool,
    notes: &mut Vec<String>,
) -> Result<LockedPackages, LockError> {
    let arch = arch_for(p, platform)?;
    let request = request_hash(p, &arch);
    if let Some(o) = old.filter(|o| !update && o.request == request) {
        return Ok(o.clone());
    }
    let sources = sources_for(p)?;
    notes.push(format!(
        "resolving {} Debian packages for {arch}",
        p.include.len()
    ));
    let mut suites = Vec::new();
    let mut universe = Vec::new();
    for s in &sources {
        let (suite, pkgs) = load_source(s, &arch, cache, offline).await?;
        suites.push(suite);
        universe.extend(pkgs);
    }
    let requests: Vec<Request> = p.include.iter().map(|s| Request::parse(s)).collect();
    let chosen = resolve(&universe, &requests, p.essential)?;
    let jobs: Vec<(String, String, String)> = chosen
        .iter()
        .map(|c| {
            let uri = &sources
                .iter()
                .find(|s| s.suite == c.suite)
                .expect("listed")
                .uri;
            (
                format!("{uri}/{}", c.filename),
                c.sha256.clone(),
                format!("the signed index {}", c.index),
            )
        })
        .collect();
    notes.push(format!("fetching {} .deb files", jobs.len()));
    futures_util::stream::iter(jobs)
        .map(|(url, sha, by)| async move { cache.ensure(&url, Some(&sha), &by, offline).await })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    // Only the suites that supplied a pinned package: a suite that gave
    // nothing (say -updates, re-signed daily) would otherwise change the
    // lockfile of every fresh lock without changing a byte of the image.
    suites.retain(|s| chosen.iter().any(|c| c.suite == s.suite));
    Ok(LockedPackages {
        arch,
        request,
        suites,
        packages: chosen
            .iter()
            .map(|c| LockedPackage {
                name: c.name.clone(),
                version: c.version.clone(),
                arch: c.arch.clone(),
                path: c.filename.clone(),
                size: c.size,
                sha256: c.sha256.clone(),
                suite: c.suite.clone(),
            })
            .collect(),
    })
}

/// Make sure every pinned `.deb` is in the cache, fetching a missing one by
/// its pinned path from the source serving its suite; `pinned_by` names the
/// lockfile for mismatch messages.
pub(crate) async fn ensure_debs(
    p: &Packages,
    pins: &LockedPackages,
    cache: &FetchCache,
    offline: bool,
    pinned_by: &str,
) -> Result<(), LockError> {
    let missing: Vec<&LockedPackage> = pins
        .packages
        .iter()
        .filter(|x| !cache.has(&x.sha256))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sources = sources_for(p)?;
    let mut jobs = Vec::new();
    for x in missing {
        let s = sources
            .iter()
            .find(|s| s.suite == x.suite)
            .ok_or_else(|| DebError::NoSuite {
                suite: x.suite.clone(),
            })?;
        jobs.push((format!("{}/{}", s.uri, x.path), x));
    }
    futures_util::stream::iter(jobs)
        .map(|(url, x)| async move {
            match cache
                .ensure(&url, Some(&x.sha256), pinned_by, offline)
                .await
            {
                Err(e @ LockError::FetchMismatch { .. }) => Err(e),
                Err(e) => Err(LockError::from(DebError::NotServed {
                    package: x.name.clone(),
                    version: x.version.clone(),
                    path: x.path.clone(),
                    reason: e.to_string().lines().next().unwrap_or("").to_string(),
                })),
                Ok(h) => Ok(h),
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Layers for the pinned packages, read from the cache (see
/// [`ensure_debs`]); `local_ca` are extra CA certificates of the recipe.
pub fn layers(
    pins: &LockedPackages,
    cache: &FetchCache,
    local_ca: &[(String, Vec<u8>)],
) -> Result<Vec<LayerSpec>, DebError> {
    let mut unpacked = Vec::new();
    for x in &pins.packages {
        unpacked.push(rootfs::unpack_file(&x.name, &cache.path(&x.sha256))?);
    }
    Ok(rootfs::layers(&unpacked, local_ca))
}
