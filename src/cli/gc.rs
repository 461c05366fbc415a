//! `bottle gc`: remove what runs whose owning process is gone left behind,
//! and temp files that a killed writer left in the blob store.

use super::CliResult;
use crate::runner::gc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only show what would be removed
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn exec(args: Args) -> CliResult {
    let docker = crate::engine::connect().await?;
    let removed = gc::gc(&docker, args.dry_run).await?;
    // A killed `lock` can leave a half-written `.tmp-*` blob behind (never
    // under a digest name); an hour is far longer than any write takes, so
    // a concurrent `lock` never loses its temp file.
    if !args.dry_run {
        let store = crate::oci::BlobStore::open_default()?;
        let temps = store.remove_stale_temps(std::time::Duration::from_secs(3600))?;
        if temps > 0 && !args.json {
            eprintln!(
                "removed {temps} stale temp file(s) from {}",
                store.root().display()
            );
        }
    }
    super::ps::print_runs(&removed, args.json)?;
    if !args.json {
        let n: usize = removed.iter().map(|r| r.containers.len()).sum();
        let m: usize = removed.iter().map(|r| r.networks.len()).sum();
        eprintln!(
            "{} {} run(s): {n} container(s), {m} network(s)",
            if args.dry_run {
                "would remove"
            } else {
                "removed"
            },
            removed.len()
        );
    }
    Ok(0)
}
