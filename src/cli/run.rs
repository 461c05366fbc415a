//! `bottle run`: parse the options, print the preflight or the dry-run plan,
//! ask y/N, and hand over to `runner`. The agent's exit code is ours.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use super::common::{ProjectOpt, RegistryOpt};
use super::{CliError, CliResult};
use crate::netpool::Pool;
use crate::plan::{EnvValue, RunOptions, RunPlan};
use crate::policy::SidecarKind;
use crate::reference::Reference;
use crate::runner::{self, Request};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit code: the agent's own; 4 when the egress sidecar stopped mid-session (the run was ended and torn down); 129/130/143 after SIGHUP/SIGINT/SIGTERM; 1, 2, 3 when bottle itself failed (run, input, environment)."
)]
pub(super) struct Args {
    /// <agent> | <agent>@sha256:… | <registry>/<repo>@sha256:… (tags are refused)
    #[arg(value_name = "REF")]
    reference: String,

    /// Command to run instead of the image's entrypoint (non-interactive; its exit code is returned)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,

    /// Do not ask for confirmation (required without a terminal)
    #[arg(long, short = 'y')]
    yes: bool,

    /// Print the plan and exit before any engine call
    #[arg(long)]
    dry_run: bool,

    /// Print the plan as JSON (on stdout with --dry-run, else on stderr)
    #[arg(long)]
    json: bool,

    /// Egress sidecar (default: what the bottle's policy names)
    #[arg(long, value_name = "pipelock|builtin")]
    sidecar: Option<SidecarKind>,

    /// Mount this host folder at /workspace (read-write)
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,

    /// Memory limit in MiB (default: the bottle's policy)
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,

    /// CPU limit, e.g. 1.5 (default: the bottle's policy)
    #[arg(long, value_name = "CPUS")]
    cpus: Option<f64>,

    /// Process limit (default: the bottle's policy)
    #[arg(long, value_name = "N")]
    pids: Option<u64>,

    /// Size of the home and of /tmp in MiB, each (memory-backed; default: the bottle's policy)
    #[arg(long, value_name = "MIB")]
    disk: Option<u64>,

    /// Existing Docker network for the sidecar's way out (default: a per-run bridge network, removed at the end)
    #[arg(long, value_name = "NAME")]
    egress_network: Option<String>,

    /// Let the sidecar reach this allowlisted host on a private address (repeatable)
    #[arg(long = "trust-host", value_name = "HOST")]
    trust_hosts: Vec<String>,

    /// Run on a Docker engine older than 25.0.5 (CVE-2024-29018) with bottle's DNS mitigation
    #[arg(long, env = "BOTTLE_ALLOW_UNPATCHED_ENGINE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    allow_unpatched_engine: bool,

    /// Address range the run's networks get their small subnets from (default 198.18.0.0/15, a range no real network uses; it must be private, shared or benchmarking space)
    #[arg(long, env = "BOTTLE_SUBNET_POOL", value_name = "CIDR", value_parser = parse_pool)]
    subnet_pool: Option<Pool>,

    /// Sidecar image to use instead of the default, pinned by digest (<registry>/<repo>@sha256:…)
    #[arg(long, env = "BOTTLE_SIDECAR_IMAGE", value_name = "REF")]
    sidecar_image: Option<String>,

    #[command(flatten)]
    registry: RegistryOpt,

    #[command(flatten)]
    project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let reference = Reference::parse(&args.reference)?;
    let interactive = args.command.is_empty();
    let tty = interactive && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let workspace = match &args.workspace {
        None => None,
        Some(w) => {
            let abs = std::fs::canonicalize(w)
                .map_err(|e| CliError::usage(format!("--workspace {}: {e}", w.display())))?;
            if !abs.is_dir() {
                return Err(CliError::usage(format!(
                    "--workspace {}: not a directory",
                    w.display()
                )));
            }
            Some(abs)
        }
    };
    let cpu_millis = match args.cpus {
        None => None,
        Some(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Some((c * 1000.0).round() as u64),
        Some(c) => {
            return Err(CliError::usage(format!(
                "--cpus {c}: expected a positive number of CPUs"
            )));
        }
    };
    let options = RunOptions {
        command: args.command.clone(),
        tty,
        workspace,
        sidecar: args.sidecar,
        memory_mib: args.memory,
        cpu_millis,
        pids: args.pids,
        disk_mib: args.disk,
        egress_network: args.egress_network.clone(),
        trust_hosts: args.trust_hosts.clone(),
        dns_mitigation: false,
    };
    if let Some(img) = &args.sidecar_image {
        let pinned = img
            .split_once('@')
            .is_some_and(|(_, d)| crate::reference::is_digest(d));
        if !pinned {
            return Err(CliError::usage(format!(
                "--sidecar-image `{img}` must be pinned by digest (<registry>/<repo>@sha256:<64 hex>)"
            )));
        }
    }
    let request = Request {
        sidecar_image: args.sidecar_image.clone(),
        reference,
        registry: args.registry.get(),
        root: args.project.root.clone(),
        options,
        allow_unpatched_engine: args.allow_unpatched_engine,
        pool: args.subnet_pool.unwrap_or_else(Pool::default_pool),
    };

    if args.dry_run {
        let (plan, config) = runner::dry_run(&request)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            let v = serde_json::json!({ "plan": plan, "sidecar_config": config });
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
        } else {
            let _ = write!(out, "{}", render_plan(&plan, &config));
        }
        return Ok(0);
    }

    let stdin_tty = std::io::stdin().is_terminal();
    if !args.yes && !stdin_tty {
        return Err(CliError::usage(
            "no terminal to ask for confirmation: pass --yes to run without the y/N preflight",
        ));
    }

    let bar = progress_bar();
    let mut progress = |p: &crate::engine::PullProgress| {
        if let Some(b) = &bar {
            if p.total > 0 {
                b.set_length(p.total);
                b.set_position(p.current);
            }
            b.set_message(p.status.clone());
        }
    };
    // SIGINT/SIGTERM while the image is fetched, loaded or realized: stop
    // with a message; dropping `prepare` drops its transfers (the engine
    // cancels a pull or load whose client went away; temp blobs are removed
    // by their guards). Nothing has been created yet.
    let prepared = match super::interruptible(runner::prepare(&request, &mut progress)).await {
        Ok(p) => p?,
        Err(sig) => {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(super::interrupted(
                sig,
                "while getting the image; nothing was started",
            ));
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!("image: {}", prepared.source);
    for n in &prepared.notes {
        eprintln!("note: {n}");
    }

    if args.json {
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&prepared.plan).unwrap_or_default()
        );
    } else {
        for line in prepared.plan.preflight_lines() {
            eprintln!("{line}");
        }
    }
    if !prepared.engine_version.patched() {
        eprintln!(
            "warning: Docker engine {} is older than 25.0.5 (CVE-2024-29018); names outside the bottle are blocked by giving the agent a resolver that answers nothing",
            prepared.engine_version.raw
        );
    }
    let approved = args.yes
        || match super::interruptible(async {
            tokio::task::spawn_blocking(confirm)
                .await
                .map_err(|e| CliError::usage(format!("reading the answer: {e}")))?
        })
        .await
        {
            Ok(answer) => answer?,
            Err(sig) => {
                return Ok(super::interrupted(
                    sig,
                    "at the question; nothing was started",
                ));
            }
        };
    if !approved {
        eprintln!("not started (answer `y`, or pass --yes to skip the question)");
        return Ok(1);
    }

    let outcome = runner::execute(prepared, interactive).await?;
    if let Some(b) = &outcome.blocked {
        eprintln!("bottle: {b}");
    }
    for e in &outcome.teardown_errors {
        eprintln!("bottle: teardown: {e}");
    }
    if let Some(why) = &outcome.sidecar_lost {
        eprintln!(
            "bottle: {why}; the bottle was torn down (exit {})",
            runner::SIDECAR_LOST_EXIT
        );
    }
    if let Some(sig) = outcome.signal {
        eprintln!("bottle: stopped by {sig}; the bottle was torn down");
    }
    Ok(outcome.code)
}

fn confirm() -> Result<bool, CliError> {
    eprint!("Uncork this bottle? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "getting the image {bar:30} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// The human form of `--dry-run`: the preflight, then what would be created.
fn render_plan(plan: &RunPlan, config: &str) -> String {
    let mut s = String::new();
    for line in plan.preflight_lines() {
        s.push_str(&line);
        s.push('\n');
    }
    let c = &plan.container;
    s.push_str(&format!("image: {}\n", plan.image.reference));
    s.push_str(&format!(
        "network: {} (internal, host isolated, no IPv6)\n",
        plan.networks.internal
    ));
    s.push_str(&format!(
        "egress network: {}{}\n",
        plan.networks.egress,
        if plan.networks.egress_created {
            " (per-run bridge, removed at the end)"
        } else {
            " (existing, left in place)"
        }
    ));
    s.push_str(&format!(
        "sidecar: {} on both networks, port {}, config {}\n",
        plan.sidecar.name, plan.sidecar.port, plan.sidecar.config_path
    ));
    s.push_str(&format!("agent: {} as user {}\n", c.name, c.user));
    if c.command.is_empty() {
        s.push_str("  command: the image's entrypoint (interactive)\n");
    } else {
        s.push_str(&format!("  command: {:?}\n", c.command));
    }
    for e in &c.env {
        match &e.value {
            EnvValue::Fixed(v) => s.push_str(&format!("  env {}={}\n", e.name, v)),
            EnvValue::Host { from, set } => s.push_str(&format!(
                "  env {} <- host {} ({})\n",
                e.name,
                from,
                if *set { "set" } else { "unset" }
            )),
        }
    }
    if !c.dns.is_empty() {
        s.push_str(&format!(
            "  dns upstream: {} (names outside the bottle do not resolve)\n",
            c.dns.join(", ")
        ));
    }
    s.push_str(&format!(
        "  hardening: non-root, cap-drop ALL, no-new-privileges, read-only root, home {} and /tmp are tmpfs of {} MiB each (in memory, gone with the bottle), init, no published ports, the engine's default seccomp\n",
        c.home, plan.limits.disk_mib
    ));
    s.push_str("sidecar config:\n");
    for line in config.lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    Pool::parse(s).map_err(|e| e.to_string())
}
