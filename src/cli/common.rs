//! Options shared by several commands, defined once so they mean the same
//! everywhere (cargo's command prelude).

use std::path::PathBuf;

/// Where images are pushed to and pulled from. Optional: without one, images
/// live in the local blob store (`$BOTTLE_CACHE_DIR/oci`).
#[derive(clap::Args, Debug, Clone)]
pub(super) struct RegistryOpt {
    /// Registry host[:port] for pushes and pulls (default: none; images stay
    /// in the local store). Plain HTTP is used for loopback hosts
    /// (localhost, 127.0.0.0/8, [::1]), HTTPS otherwise.
    #[arg(long, env = "BOTTLE_REGISTRY", value_name = "HOST[:PORT]")]
    pub registry: Option<String>,
}

impl RegistryOpt {
    /// The registry, with an empty value treated as none.
    pub(super) fn get(&self) -> Option<String> {
        self.registry.clone().filter(|r| !r.trim().is_empty())
    }
}

/// Which project (the folder holding `agents/`) a command works on.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ProjectOpt {
    /// Project root (the folder with `agents/`, `images/`, `lockfiles/`).
    /// Default: the nearest ancestor of the current directory that has `agents/`.
    #[arg(long, env = "BOTTLE_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Print a command's result line on stdout. A closed pipe (`bottle lock a |
/// head -0`) is not an error, as in ripgrep; `println!` would panic there.
pub(super) fn print_result(text: &str) -> Result<(), super::CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(super::CliError::new(
            crate::error::ExitKind::Environment,
            format!("cannot write the result to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}
