//! `bottle ps`: the bottles on this engine, grouped by run.

use std::io::Write;

use super::{CliError, CliResult};
use crate::runner::gc::{self, RunInfo};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let docker = crate::engine::connect().await?;
    let runs = gc::ps(&docker).await?;
    print_runs(&runs, args.json)?;
    Ok(0)
}

pub(super) fn print_runs(runs: &[RunInfo], json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        let s = serde_json::to_string_pretty(runs)
            .map_err(|e| CliError::usage(format!("serializing: {e}")))?;
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<28} {:<12} {:<9} {:<8} CONTAINERS",
        "RUN", "AGENT", "OWNER", "ALIVE"
    );
    for r in runs {
        let containers: Vec<String> = r
            .containers
            .iter()
            .map(|c| format!("{}:{}", c.role, c.state))
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:<12} {:<9} {:<8} {}",
            r.run_id,
            r.agent,
            r.owner_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            if r.owner_alive { "yes" } else { "no" },
            containers.join(" ")
        );
    }
    Ok(())
}
