//! `bottle export <ref> -o FILE.tar`: write a locked image to one archive
//! (an OCI layout that `docker load` also reads); prints the digest and the
//! file on stdout.

use std::path::PathBuf;

use super::CliResult;
use super::common::{ProjectOpt, RegistryOpt};
use crate::progress::Progress;
use crate::share;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The image: <agent> (digest from its lockfile), <agent>@sha256:… or
    /// <registry>/<repo>@sha256:…. Tags are refused.
    pub reference: String,
    /// The archive to write (replaced atomically).
    #[arg(short = 'o', long = "output", value_name = "FILE.tar")]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
    #[command(flatten)]
    pub project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let source = share::locate(
        &args.reference,
        args.registry.get().as_deref(),
        args.project.root.as_deref(),
    )?;
    let store = share::open_store()?;
    let image = share::fetch_and_export(&source, &store, &args.output, &Progress::auto()).await?;
    let size = std::fs::metadata(&args.output).map(|m| m.len()).ok();
    eprintln!(
        "exported {source} to {}{}",
        args.output.display(),
        size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
    );
    if args.json {
        let v = serde_json::json!({
            "manifest_digest": image.manifest_digest,
            "file": args.output.display().to_string(),
            "bytes": size,
        });
        println!("{v}");
    } else {
        println!("{} {}", image.manifest_digest, args.output.display());
    }
    Ok(0)
}
