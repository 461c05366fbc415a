//! `bottle check [<agent>…|--all]`: for CI. Exit 0 when every lockfile is up
//! to date and rebuilds to its digest, 1 when any is not, 2 for bad input, 3
//! when the environment is missing something.

use super::common::{ProjectOpt, RegistryOpt, print_result};
use super::{CliError, CliResult};
use crate::error::{Classify, ExitKind};
use crate::lock;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Agents to check (default with --all: every folder of `agents/`).
    pub agents: Vec<String>,
    /// Check every agent of the project.
    #[arg(long, conflicts_with = "agents")]
    pub all: bool,
    /// Never use the network (inputs must be in the cache).
    #[arg(long)]
    pub offline: bool,
    /// Print one JSON report per agent (an array) on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpt,
    #[command(flatten)]
    pub project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let ctx = super::lock::context(&args.project, &args.registry, "linux/amd64", args.offline)?;
    let agents = if args.all {
        crate::manifest::list_agents(&ctx.root)?
    } else if args.agents.is_empty() {
        return Err(CliError::usage("name at least one agent, or pass --all"));
    } else {
        args.agents.clone()
    };
    let mut reports = Vec::new();
    let mut worst: Option<ExitKind> = None;
    for a in &agents {
        match lock::check(&ctx, a).await {
            Ok(r) => {
                if !r.ok() {
                    worst = Some(worse(worst, ExitKind::Failure));
                }
                if r.ok() {
                    eprintln!("ok    {a}  {}", r.locked_digest.as_deref().unwrap_or(""));
                } else {
                    eprintln!("FAIL  {a}");
                    for p in &r.problems {
                        eprintln!("      {p}");
                    }
                }
                reports.push(serde_json::to_value(&r).unwrap_or_default());
            }
            Err(e) => {
                let kind = e.exit_kind();
                worst = Some(worse(worst, kind));
                eprintln!("ERROR {a}: {e}");
                reports.push(serde_json::json!({
                    "agent": a, "error": e.to_string(), "exit": kind.code(),
                }));
            }
        }
    }
    if args.json {
        print_result(&serde_json::Value::Array(reports).to_string())?;
    }
    Ok(worst.map_or(0, ExitKind::code))
}

/// Environment (3) beats bad input (2) beats a failed check (1).
fn worse(a: Option<ExitKind>, b: ExitKind) -> ExitKind {
    match a {
        Some(a) if a.code() >= b.code() => a,
        _ => b,
    }
}
