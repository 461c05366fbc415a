//! `bottle proxy --config FILE [--listen ADDR] [--ssh-host HOST]…`: the
//! builtin egress sidecar. Reads the per-run config (pipelock's format, JSON
//! form), refuses to start on any section it does not implement (exit 2),
//! then serves until SIGTERM. Decision lines go to stdout, one JSON per line.
//! A config over 1 MiB is refused (exit 2) without reading the rest.
//! With `--secrets-stdin` the run's secrets are read from stdin first
//! (never argv, env or a file; see `egress::proxy::secrets`).

use std::path::PathBuf;

use super::CliResult;
use crate::egress::{self, proxy};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
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
    /// Read the run's secrets (JSON, as `bottle run` writes it) from stdin
    /// until EOF before serving; the only way secrets reach the proxy
    #[arg(long = "secrets-stdin")]
    pub secrets_stdin: bool,
}

pub(super) async fn exec(args: Args) -> CliResult {
    // Stdin (`-`) lets the runner hand the config over through the engine
    // API to a container whose root filesystem is read-only.
    if args.secrets_stdin && args.config.as_os_str() == "-" {
        return Err(crate::egress::EgressError::Config {
            path: "--config -".into(),
            msg: "stdin carries the secrets with --secrets-stdin; pass the config as a file".into(),
        }
        .into());
    }
    let config = proxy::input::read_config(&args.config).await?;
    let settings = proxy::Settings::from_config(&config, &args.ssh_hosts)?;
    let vault = if args.secrets_stdin {
        let msg = proxy::secrets::read_message(tokio::io::stdin()).await?;
        Some(proxy::secrets::Vault::from_message(msg)?)
    } else {
        None
    };
    let p = proxy::Proxy::with_vault(
        settings,
        proxy::Resolver::System,
        proxy::LogSink::Stdout,
        vault,
    );
    proxy::run(p, &args.listen).await?;
    Ok(0)
}
