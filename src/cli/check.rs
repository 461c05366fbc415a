//! `bottle check [<agent>…|--all]`: for CI. Exit 0 when every lockfile is up
//! to date and rebuilds to its digest, 1 when any is not, 2 for bad input, 3
//! when the environment is missing something. Under `--all` an agent with no
//! lockfile is reported `unlocked` and does not fail (nothing of it can run
//! by name). `--json`: an array of agent objects, or with `--all`
//! `{"schema": 1, "agents": [...], "summary": {...}}` (README, "Reviewing a
//! bottle").

use super::common::{ProjectOpt, RegistryOpt, print_result};
use super::{CliError, CliResult};
use crate::error::{Classify, ExitKind};
use crate::lock::{self, CheckStatus};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Agents to check (default with --all: every folder of `agents/`).
    pub agents: Vec<String>,
    /// Check every agent of the project (an agent with no lockfile is
    /// reported as `unlocked` and does not fail the check).
    #[arg(long, conflicts_with = "agents")]
    pub all: bool,
    /// Never use the network (inputs must be in the cache).
    #[arg(long)]
    pub offline: bool,
    /// Print the reports as JSON on stdout: an array of agent objects, or
    /// with --all `{"schema", "agents": [...], "summary"}` (README).
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
    let mut counts = Counts::default();
    for a in &agents {
        match lock::check(&ctx, a).await {
            Ok(r) => {
                counts.add(r.status);
                // With --all, an agent that was never locked grants nothing
                // (`run <agent>` needs its lockfile): reported, not failed.
                // Named on its own, it fails as before.
                let unlocked_in_all = args.all && r.status == CheckStatus::Unlocked;
                if r.ok() {
                    eprintln!("ok    {a}  {}", r.locked_digest.as_deref().unwrap_or(""));
                } else if unlocked_in_all {
                    eprintln!("skip  {a}  not locked (lockfiles/{a}.lock.json does not exist)");
                } else {
                    worst = Some(worse(worst, ExitKind::Failure));
                    eprintln!("FAIL  {a}");
                    for p in &r.problems {
                        eprintln!("      {p}");
                    }
                }
                reports.push(agent_json(&r));
            }
            Err(e) => {
                let kind = e.exit_kind();
                worst = Some(worse(worst, kind));
                counts.error += 1;
                eprintln!("ERROR {a}: {e}");
                reports.push(serde_json::json!({
                    "agent": a, "status": "error", "error": e.to_string(), "exit": kind.code(),
                    "expected_digest": null, "actual_digest": null, "first_difference": null,
                    "problems": [],
                }));
            }
        }
    }
    let code = worst.map_or(0, ExitKind::code);
    if args.json {
        let out = if args.all {
            serde_json::json!({
                "schema": 1,
                "agents": reports,
                "summary": counts.json(agents.len(), code),
            })
        } else {
            serde_json::Value::Array(reports)
        };
        print_result(&out.to_string())?;
    }
    Ok(code)
}

/// One agent's object: the report plus the documented names for its
/// digests (`expected_digest` = locked, `actual_digest` = rebuilt).
fn agent_json(r: &lock::CheckReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("expected_digest".into(), r.locked_digest.clone().into());
        o.insert("actual_digest".into(), r.rebuilt_digest.clone().into());
        o.entry("first_difference")
            .or_insert(serde_json::Value::Null);
    }
    v
}

#[derive(Default)]
struct Counts {
    ok: usize,
    stale: usize,
    differs: usize,
    unlocked: usize,
    error: usize,
}

impl Counts {
    fn add(&mut self, s: CheckStatus) {
        match s {
            CheckStatus::Ok => self.ok += 1,
            CheckStatus::Stale => self.stale += 1,
            CheckStatus::Differs => self.differs += 1,
            CheckStatus::Unlocked => self.unlocked += 1,
        }
    }

    fn json(&self, agents: usize, exit: u8) -> serde_json::Value {
        serde_json::json!({
            "agents": agents, "ok": self.ok, "stale": self.stale, "differs": self.differs,
            "unlocked": self.unlocked, "error": self.error, "exit": exit,
        })
    }
}

/// Environment (3) beats bad input (2) beats a failed check (1).
fn worse(a: Option<ExitKind>, b: ExitKind) -> ExitKind {
    match a {
        Some(a) if a.code() >= b.code() => a,
        _ => b,
    }
}
