//! `bottle push <ref> --to <registry>/<repo>`: copy a locked image to another
//! registry by digest; prints `<registry>/<repo>@sha256:…` on stdout.

use super::CliResult;
use super::common::{ProjectOpt, RegistryOpt};
use crate::progress::Progress;
use crate::share;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The image: <agent> (digest from its lockfile), <agent>@sha256:… or
    /// <registry>/<repo>@sha256:…. Tags are refused.
    pub reference: String,
    /// Destination <registry>/<repo>, e.g. registry.example.com/team/hello.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub to: String,
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
    let (to_registry, to_repo) = share::destination(&args.to)?;
    let store = share::open_store()?;
    eprintln!("copying {source} to {to_registry}/{to_repo}");
    let (dest, stats) =
        share::push(&source, &to_registry, &to_repo, &store, &Progress::auto()).await?;
    eprintln!(
        "pushed {} blobs ({} bytes), {} already there, {} mounted",
        stats.blobs_uploaded, stats.bytes_uploaded, stats.blobs_skipped, stats.blobs_mounted
    );
    if args.json {
        let v = serde_json::json!({
            "reference": dest.to_string(),
            "source": source.to_string(),
            "manifest_digest": dest.digest,
            "push": {
                "blobs_uploaded": stats.blobs_uploaded,
                "bytes_uploaded": stats.bytes_uploaded,
                "blobs_skipped": stats.blobs_skipped,
                "blobs_mounted": stats.blobs_mounted,
            },
        });
        println!("{v}");
    } else {
        println!("{dest}");
    }
    Ok(0)
}
