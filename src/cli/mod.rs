//! The command line: the only layer that parses arguments, prints, prompts and
//! chooses exit codes. Each command is a file with its `Args` and a short
//! `exec` that calls one operation in the library (cargo's pattern).
//!
//! Stdout carries only a command's result (a reference, JSON); progress and
//! human detail go to stderr, so `ref=$(bottle lock hello)` works in scripts.

mod common;
mod error;

mod check;
mod diff;
mod doctor;
mod export;
mod gc;
mod import;
mod inspect;
mod lock;
mod logs;
mod proxy;
mod ps;
mod push;
mod run;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// Result of a command: the process exit code on success (`check` and `run`
/// return non-zero codes without that being an error of `bottle` itself).
pub type CliResult = Result<u8, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "bottle",
    version,
    about = "Build and run sandboxed, reproducible containers for AI coding agents",
    long_about = "bottle builds a content-hashed lockfile and a bit-for-bit reproducible OCI image \
from an agent manifest (agents/<agent>/bottle.json), and runs that exact image by digest on its own \
internal network whose only way out is an egress sidecar that allows only the locked hosts.",
    after_help = "Start with:\n  bottle lock hello            build the example agent into the local store, print hello@sha256:…\n  bottle run --yes hello -- id run a command in it behind its egress sidecar"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Resolve an agent manifest, build its image reproducibly into the local store (and push it when a registry is named), write the lockfile; prints <agent>@sha256:…
    Lock(lock::Args),
    /// CI gate: is each lockfile up to date, and does a rebuild from it give the same digest? (exit 0/1)
    Check(check::Args),
    /// What a locked bottle may do (hosts, env, secrets, limits, sidecar) and what it is (layers, inputs, packages, base), from a lockfile, the store, a registry or an archive; nothing runs
    Inspect(inspect::Args),
    /// Compare two bottles, capabilities first (exit 0 when they did not grow, 1 when they did); one <agent> compares its lockfile with git's HEAD
    Diff(diff::Args),
    /// Run a locked bottle by digest behind its egress sidecar: <agent> | <agent>@sha256:… | <registry>/<repo>@sha256:…
    Run(Box<run::Args>),
    /// List running bottles
    Ps(ps::Args),
    /// Remove containers and networks left behind by bottles whose owning process is gone, and stale blob-store temp files
    Gc(gc::Args),
    /// Copy a locked image to another registry; the digest does not change
    Push(push::Args),
    /// Write a locked image to an OCI archive (-o FILE.tar); the digest does not change
    Export(export::Args),
    /// Load an OCI archive written by `bottle export` into the local store (and push it when a registry is named)
    Import(import::Args),
    /// What this machine can do: engine, isolation, DNS fix, user namespaces, registry, store, disk (exit 0 when `run` will work)
    Doctor(doctor::Args),
    /// The builtin egress sidecar: a strict allowlist forward proxy (runs inside its container)
    Proxy(proxy::Args),
    /// Show a run's audit record: every decision its sidecar made (--follow, --json)
    Logs(logs::Args),
}

/// Parse, run, and map the outcome to an exit code in one place.
pub fn main() -> std::process::ExitCode {
    // rustls needs one process-wide crypto provider; ring keeps the build free
    // of C toolchains beyond what the machine has.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(3);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Do not wait for stray blocking tasks (e.g. a stdin reader) on the way out.
    runtime.shutdown_background();
    // Said once, whatever the command: the store removed a corrupt blob
    // (the command rebuilt or fetched it, or its error says what to do).
    for line in crate::oci::store::take_removed() {
        eprintln!("warning: {line}");
    }
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            err.report();
            std::process::ExitCode::from(err.code())
        }
    }
}

async fn dispatch(command: Command) -> CliResult {
    // `run` handles signals itself (it must tear a bottle down); `proxy` is
    // the sidecar's process. Every other command stops on SIGINT/SIGTERM
    // with a message, its future dropped so temp files are removed.
    let what = "before it finished; nothing was written (partial downloads were removed)";
    let guarded = |r: Result<CliResult, &'static str>| match r {
        Ok(r) => r,
        Err(sig) => Ok(interrupted(sig, what)),
    };
    match command {
        Command::Lock(a) => guarded(interruptible(lock::exec(a)).await),
        Command::Check(a) => guarded(interruptible(check::exec(a)).await),
        Command::Inspect(a) => guarded(interruptible(inspect::exec(a)).await),
        Command::Diff(a) => guarded(interruptible(diff::exec(a)).await),
        Command::Run(a) => run::exec(*a).await,
        Command::Ps(a) => ps::exec(a).await,
        Command::Gc(a) => gc::exec(a).await,
        Command::Push(a) => guarded(interruptible(push::exec(a)).await),
        Command::Export(a) => guarded(interruptible(export::exec(a)).await),
        Command::Import(a) => guarded(interruptible(import::exec(a)).await),
        Command::Doctor(a) => doctor::exec(a).await,
        Command::Proxy(a) => proxy::exec(a).await,
        Command::Logs(a) => logs::exec(a).await,
    }
}

/// Run `fut` unless SIGINT or SIGTERM comes first; then drop it (its
/// destructors run) and return the signal's name.
pub(crate) async fn interruptible<T>(
    fut: impl std::future::Future<Output = T>,
) -> Result<T, &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Ok(fut.await);
    };
    tokio::select! {
        r = fut => Ok(r),
        _ = int.recv() => Err("SIGINT"),
        _ = term.recv() => Err("SIGTERM"),
    }
}

/// Say that `sig` stopped the command and return its exit code (128 + N).
pub(crate) fn interrupted(sig: &str, what: &str) -> u8 {
    eprintln!("bottle: stopped by {sig} {what}");
    if sig == "SIGTERM" { 143 } else { 130 }
}
