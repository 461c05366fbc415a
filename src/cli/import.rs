//! `bottle import FILE.tar`: verify an archive written by `bottle export`,
//! store its blobs and push it to a registry; prints
//! `<registry>/<repo>@sha256:…` (the digest that was exported).

use std::path::PathBuf;

use super::CliResult;
use super::common::RegistryOpt;
use crate::progress::Progress;
use crate::share;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The archive written by `bottle export`.
    #[arg(value_name = "FILE.tar")]
    pub file: PathBuf,
    /// Destination <registry>/<repo>. Default: <--registry>/bottle/<agent>,
    /// the agent read from the image's policy label; with no registry at
    /// all, the image stays in the local store.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub to: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let to = args.to.as_deref().map(share::destination).transpose()?;
    let store = share::open_store()?;
    let image = share::read(&args.file, &store)?;
    eprintln!(
        "verified {} ({} layers) from {}",
        image.manifest_digest,
        image.layers.len(),
        args.file.display()
    );
    let pushed = share::import(
        &image,
        &store,
        to,
        args.registry.get().as_deref(),
        &Progress::auto(),
    )
    .await?;
    let Some((dest, stats)) = pushed else {
        // No registry named: the image stays in the local store, where
        // `run`, `push` and `export` find it by digest.
        let reference = match share::policy_of(&image) {
            Ok(p) => format!("{}@{}", p.agent, image.manifest_digest),
            Err(_) => image.manifest_digest.clone(),
        };
        eprintln!(
            "stored in the local store {} (no registry configured); run it with `bottle run {reference}`",
            store.root().display()
        );
        if args.json {
            let v = serde_json::json!({
                "reference": reference,
                "manifest_digest": image.manifest_digest,
                "file": args.file.display().to_string(),
            });
            super::common::print_result(&v.to_string())?;
        } else {
            super::common::print_result(&reference)?;
        }
        return Ok(0);
    };
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
