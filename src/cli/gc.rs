//! `bottle gc`: remove what runs whose owning process is gone left behind
//! (containers, networks), and the temp files and dirs of dead owners (a
//! run's `$TMPDIR/bottle-run-*`, a killed `lock`'s half-written blobs and
//! downloads). Reports only what is confirmed gone; exit 1 when something
//! could not be removed.

use std::io::Write;

use super::{CliError, CliResult};
use crate::runner::gc;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Only show what would be removed
    #[arg(long)]
    dry_run: bool,
    /// Print JSON ({"runs": […], "temps": […], "failed": […]}) instead of a table
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: Args) -> CliResult {
    // Temp files need no engine: they are swept even when it is down (the
    // engine's error still ends the command, exit 3, after the report).
    let engine = match crate::engine::connect().await {
        Ok(docker) => gc::gc(&docker, args.dry_run).await.map_err(CliError::from),
        Err(e) => Err(CliError::from(e)),
    };
    let (mut sweep, engine_error) = match engine {
        Ok(sweep) => (sweep, None),
        Err(e) => (gc::Sweep::default(), Some(e)),
    };
    let places = gc::temp_places(&std::env::temp_dir(), &crate::oci::store::cache_root());
    let temps = gc::stale_temps(&places);
    if args.dry_run {
        sweep.temps = temps;
    } else {
        let (removed, failed) = gc::remove_temps(temps);
        sweep.temps = removed;
        sweep.failed.extend(failed);
    }
    if args.json {
        let v = serde_json::to_string_pretty(&sweep)
            .map_err(|e| super::CliError::usage(format!("serializing: {e}")))?;
        super::common::print_result(&v)?;
    } else {
        super::ps::print_runs(&sweep.runs, false)?;
        print_temps(&sweep.temps);
        summary(&sweep, args.dry_run);
    }
    for f in &sweep.failed {
        eprintln!("error: could not remove {} {}: {}", f.kind, f.name, f.error);
    }
    if let Some(e) = engine_error {
        return Err(e);
    }
    Ok(if sweep.failed.is_empty() { 0 } else { 1 })
}

fn print_temps(temps: &[gc::TempLeftover]) {
    if temps.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{:<12} {:<9} PATH", "TEMP BYTES", "OWNER");
    for t in temps {
        let owner = t.owner_pid.map_or_else(|| "?".into(), |p| p.to_string());
        let _ = writeln!(out, "{:<12} {:<9} {}", t.bytes, owner, t.path.display());
    }
}

fn summary(sweep: &gc::Sweep, dry_run: bool) {
    let n: usize = sweep.runs.iter().map(|r| r.containers.len()).sum();
    let m: usize = sweep.runs.iter().map(|r| r.networks.len()).sum();
    let bytes: u64 = sweep.temps.iter().map(|t| t.bytes).sum();
    eprintln!(
        "{} {} run(s): {n} container(s), {m} network(s); {} temp file(s) or dir(s) ({bytes} bytes)",
        if dry_run { "would remove" } else { "removed" },
        sweep.runs.len(),
        sweep.temps.len(),
    );
}
