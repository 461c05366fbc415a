//! `bottle import FILE.tar`: verify an archive written by `bottle export`,
//! store its blobs and push it to a registry; prints
//! `<registry>/<repo>@sha256:…` (the digest that was exported).

use std::path::PathBuf;

use super::CliResult;
use super::common::RegistryOpt;
use crate::progress::Progress;
use crate::share;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive written by `bottle export`.
    #[arg(value_name = "FILE.tar")]
    pub file: PathBuf,
    /// Destination <registry>/<repo>. Default: <--registry>/bottle/<agent>,
    /// the agent read from the image's policy label.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub to: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
}

pub async fn exec(args: Args) -> CliResult {
    let to = args.to.as_deref().map(share::destination).transpose()?;
    let store = share::open_store()?;
    let image = share::read(&args.file, &store)?;
    eprintln!(
        "verified {} ({} layers) from {}",
        image.manifest_digest,
        image.layers.len(),
        args.file.display()
    );
    let (dest, stats) = share::import(
        &image,
        &store,
        to,
        &args.registry.registry,
        &Progress::auto(),
    )
    .await?;
    eprintln!(
        "pushed {} blobs ({} bytes), {} already there",
        stats.blobs_uploaded, stats.bytes_uploaded, stats.blobs_skipped
    );
    if args.json {
        let v = serde_json::json!({
            "reference": dest.to_string(),
            "manifest_digest": dest.digest,
            "file": args.file.display().to_string(),
            "push": {
                "blobs_uploaded": stats.blobs_uploaded,
                "bytes_uploaded": stats.bytes_uploaded,
                "blobs_skipped": stats.blobs_skipped,
            },
        });
        println!("{v}");
    } else {
        println!("{dest}");
    }
    Ok(0)
}
