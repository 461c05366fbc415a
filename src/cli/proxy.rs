//! `bottle proxy --config FILE [--listen ADDR] [--ssh-host HOST]…`: the
//! builtin egress sidecar. Reads the per-run config (pipelock's format, JSON
//! form), refuses to start on any section it does not implement (exit 2),
//! then serves until SIGTERM. Decision lines go to stdout, one JSON per line.
//! A config over 1 MiB is refused (exit 2) without reading the rest.

use std::path::PathBuf;

use super::CliResult;
use crate::egress::{self, proxy};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The per-run egress config (pipelock format, as `bottle` generates it);
    /// `-` reads it from stdin until EOF, as pipelock does; at most 1 MiB
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Address to listen on
    #[arg(long, default_value = egress::LISTEN_ADDR, value_name = "ADDR")]
    pub listen: String,
    /// A host reachable on port 22 (repeatable); pipelock's format has no per-port list
    #[arg(long = "ssh-host", value_name = "HOST")]
    pub ssh_hosts: Vec<String>,
}

pub async fn exec(args: Args) -> CliResult {
    // Stdin (`-`) lets the runner hand the config over through the engine
    // API to a container whose root filesystem is read-only.
    let config = proxy::input::read_config(&args.config).await?;
    let settings = proxy::Settings::from_config(&config, &args.ssh_hosts)?;
    let p = proxy::Proxy::new(settings, proxy::Resolver::System, proxy::LogSink::Stdout);
    proxy::run(p, &args.listen).await?;
    Ok(0)
}
