//! `bottle lock <agent>`: resolve, build, push, write the lockfile; print
//! `<agent>@sha256:<hex>` on stdout and the human detail on stderr.

use super::common::{ProjectOpt, RegistryOpt, print_result};
use super::{CliError, CliResult};
use crate::lock;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The agent: a folder `agents/<agent>/` holding `bottle.json`.
    pub agent: String,
    /// Re-resolve every pin (base image digest, fetched hashes, sidecar image).
    #[arg(long)]
    pub update: bool,
    /// Platform of the base image to pin.
    #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH")]
    pub platform: String,
    /// Never use the network: a step that needs it fails with exit 3.
    #[arg(long)]
    pub offline: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
    #[command(flatten)]
    pub project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let ctx = context(&args.project, &args.registry, &args.platform, args.offline)?;
    let out = lock::lock(&ctx, &args.agent, args.update).await?;
    for n in &out.notes {
        eprintln!("{n}");
    }
    if out.push.manifest_uploaded {
        eprintln!(
            "pushed {} blobs ({} bytes), {} already in the registry",
            out.push.blobs_uploaded, out.push.bytes_uploaded, out.push.blobs_skipped
        );
    }
    if args.json {
        let v = serde_json::json!({
            "reference": out.reference,
            "manifest_digest": out.manifest_digest,
            "rebuilt": out.rebuilt,
            "lockfile_written": out.lockfile_written,
            "push": out.push,
        });
        print_result(&v.to_string())?;
    } else {
        print_result(&out.reference)?;
        if out.lockfile_written {
            eprintln!(
                "next: commit {}; run it with `bottle run {}`",
                lock::lockfile::rel_path(&args.agent),
                out.reference
            );
        }
    }
    Ok(0)
}

/// The context `lock` and `check` share, from the shared options.
pub(super) fn context(
    project: &ProjectOpt,
    registry: &RegistryOpt,
    platform: &str,
    offline: bool,
) -> Result<lock::Context, CliError> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            crate::error::ExitKind::Environment,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    let root = crate::manifest::find_root(project.root.as_deref(), &cwd)?;
    Ok(lock::Context {
        root,
        cache_root: lock::fetch::default_cache_root(),
        registry: registry.get(),
        platform: platform.to_string(),
        offline,
    })
}
