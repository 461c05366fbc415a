//! Reading `bottle proxy --config`: a file, or stdin for `-`.
//!
//! Invariant: never holds more than [`MAX_CONFIG_BYTES`] + 1 bytes of it,
//! whatever the source (a huge file, an endless pipe, `/dev/zero`): reading
//! stops there and the config is refused as bad input.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::egress::EgressError;
use crate::egress::config::{self, EgressConfig};

/// The largest config accepted; `bottle` writes a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Read and parse the config at `path` (`-` is stdin).
pub async fn read_config(path: &Path) -> Result<EgressConfig, EgressError> {
    let (name, bytes) = if path.as_os_str() == "-" {
        let name = "<stdin>".to_string();
        let bytes = read_bounded(tokio::io::stdin(), &name).await?;
        (name, bytes)
    } else {
        let name = path.display().to_string();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| EgressError::Read {
                path: name.clone(),
                source,
            })?;
        let bytes = read_bounded(file, &name).await?;
        (name, bytes)
    };
    let text = String::from_utf8(bytes).map_err(|_| EgressError::Config {
        path: name.clone(),
        msg: "not UTF-8 text; pass the JSON config `bottle` generates".into(),
    })?;
    config::parse(&text, &name)
}

async fn read_bounded(source: impl AsyncRead + Unpin, name: &str) -> Result<Vec<u8>, EgressError> {
    let mut bytes = Vec::new();
    source
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| EgressError::Read {
            path: name.to_string(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(EgressError::Config {
            path: name.to_string(),
            msg: format!(
                "larger than {} MiB, the limit for an egress config (a config `bottle` \
generates is a few KiB); check that --config names the file `bottle` wrote",
                MAX_CONFIG_BYTES >> 20
            ),
        });
    }
    Ok(bytes)
}
