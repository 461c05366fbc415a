//! `bottle inspect <ref> [--json]`: what a locked bottle may do and what it
//! is, from a lockfile, the local store, a registry or an archive, without
//! running it. The result (human report or JSON) is on stdout; where it was
//! read from is on stderr.

use super::CliResult;
use super::common::{ProjectOpt, RegistryOpt, print_result};
use crate::inspect;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// <agent> (its lockfile), a lockfile path, an archive written by
    /// `bottle export` (a path: `./x.tar`, `x.tar`), <agent>@sha256:… or
    /// <registry>/<repo>@sha256:… (the local store, else the registry).
    pub reference: String,
    /// Print the summary as JSON (the shape documented in the README).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
    #[command(flatten)]
    pub project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let found = inspect::inspect(
        &args.reference,
        args.registry.get().as_deref(),
        args.project.root.as_deref(),
    )
    .await?;
    eprintln!("inspected {}", found.origin);
    match (&found.provenance_from, found.summary.provenance) {
        (Some(p), _) => eprintln!(
            "layer names, base, inputs and packages from {} (the image records none)",
            p.display()
        ),
        (None, inspect::Provenance::Image) => eprintln!(
            "no lockfile locks this digest here: layer provenance, base, inputs and packages are unknown"
        ),
        (None, inspect::Provenance::Lockfile) => {}
    }
    let text = if args.json {
        serde_json::to_string_pretty(&found.summary).unwrap_or_default()
    } else {
        inspect::render(&found.summary).trim_end().to_string()
    };
    print_result(&text)?;
    Ok(0)
}
