//! Fetched inputs: a content-addressed cache of downloads,
//! `$BOTTLE_CACHE_DIR/fetch/sha256/<hex>` (else `<XDG cache>/bottle/fetch/…`).
//!
//! Invariants: a file in the cache always hashes to its name (downloads go to
//! a temp file in the same folder, are hashed while written, synced, and
//! renamed only once the hash is known and, if one was expected, equal to
//! it); a download whose hash differs from the pin is an error that names
//! the URL, the expected and the actual hash, and leaves nothing behind.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::LockError;

/// How the temp files of downloads in progress start.
pub const PART_PREFIX: &str = ".part-";

pub struct FetchCache {
    dir: PathBuf,
}

/// The cache root shared with the blob store (`$BOTTLE_CACHE_DIR`, else
/// the XDG cache `bottle` folder).
pub fn default_cache_root() -> PathBuf {
    crate::oci::store::cache_root()
}

impl FetchCache {
    pub fn open(cache_root: &Path) -> Result<FetchCache, LockError> {
        let dir = cache_root.join("fetch").join("sha256");
        fs::create_dir_all(&dir).map_err(|e| LockError::io("cannot create", &dir, e))?;
        Ok(FetchCache { dir })
    }

    pub fn open_default() -> Result<FetchCache, LockError> {
        Self::open(&default_cache_root())
    }

    /// Path of the cached content with this hex sha256 (present or not).
    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// The folder downloads are written in ([`PART_PREFIX`]`…`), for `gc`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has(&self, hex: &str) -> bool {
        self.path(hex).is_file()
    }

    /// Make sure the content of `url` is cached and return its hex sha256.
    /// With `expected`, a cached copy is used without any download, and a
    /// download must hash to it.
    pub async fn ensure(
        &self,
        url: &str,
        expected: Option<&str>,
        pinned_by: &str,
        offline: bool,
    ) -> Result<String, LockError> {
        if let Some(hex) = expected {
            if self.has(hex) {
                return Ok(hex.to_string());
            }
        }
        // Named for this process, so `gc` removes a killed download (often
        // the biggest leftover) once, and only once, its owner is gone.
        let prefix = crate::runner::owner::stamp(PART_PREFIX);
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(&self.dir)
            .map_err(|e| LockError::io("cannot create a temp file in", &self.dir, e))?;
        let mut hasher = Sha256::new();
        if let Some(path) = url.strip_prefix("file://") {
            let mut src = fs::File::open(path).map_err(|e| LockError::FetchLocal {
                url: url.to_string(),
                source: e,
            })?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = src.read(&mut buf).map_err(|e| LockError::FetchLocal {
                    url: url.to_string(),
                    source: e,
                })?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                tmp.write_all(&buf[..n])
                    .map_err(|e| LockError::io("cannot write", tmp.path(), e))?;
            }
        } else {
            if offline {
                return Err(LockError::Offline {
                    what: format!("downloading {url}"),
                });
            }
            download(url, &mut hasher, tmp.as_file_mut()).await?;
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| LockError::io("cannot write", tmp.path(), e))?;
        let actual = hex::encode(hasher.finalize());
        if let Some(hex) = expected {
            if hex != actual {
                return Err(LockError::FetchMismatch {
                    url: url.to_string(),
                    expected: hex.to_string(),
                    actual,
                    pinned_by: pinned_by.to_string(),
                });
            }
        }
        let dest = self.path(&actual);
        tmp.persist(&dest)
            .map_err(|e| LockError::io("cannot store", &dest, e.error))?;
        crate::fsutil::sync_dir(&self.dir);
        Ok(actual)
    }
}

async fn download(url: &str, hasher: &mut Sha256, out: &mut fs::File) -> Result<(), LockError> {
    use futures_util::StreamExt;
    let net = |reason: String| LockError::Network {
        what: format!("download {url}"),
        reason,
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("bottle/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| net(e.to_string()))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| net(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(LockError::FetchStatus {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| net(error_chain(&e)))?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .map_err(|e| LockError::io("cannot write a download for", Path::new(url), e))?;
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caches_file_urls_and_rejects_changed_content() {
        let cache_root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let f = src.path().join("tool");
        fs::write(&f, b"v1").unwrap();
        let url = format!("file://{}", f.display());
        let c = FetchCache::open(cache_root.path()).unwrap();
        let h = c.ensure(&url, None, "test", true).await.unwrap();
        assert_eq!(fs::read(c.path(&h)).unwrap(), b"v1");
        // Pinned and cached: no read of the source at all.
        fs::remove_file(&f).unwrap();
        assert_eq!(c.ensure(&url, Some(&h), "test", true).await.unwrap(), h);
        // Pinned, not cached, source changed: error naming both hashes.
        fs::remove_file(c.path(&h)).unwrap();
        fs::write(&f, b"v2").unwrap();
        let e = c
            .ensure(&url, Some(&h), "the lockfile", true)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&url) && msg.contains(&h), "{msg}");
        assert!(!c.has(&h));
        // Nothing half-written left behind.
        let left: Vec<_> = fs::read_dir(cache_root.path().join("fetch/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty());
        // https while offline: environment error.
        let e = c
            .ensure("https://example.invalid/x", None, "t", true)
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::Offline { .. }));
    }
}
