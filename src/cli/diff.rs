//! `bottle diff <ref-a> [<ref-b>] [--json | --format md]`: what changed in
//! what a bottle may do, then in what it is. Exit 0 when its capabilities
//! did not grow, 1 when they did (so CI can ask for a second reviewer).
//! With one reference (an agent), the working lockfile is compared with the
//! one at git's `HEAD`.

use super::common::{ProjectOpt, RegistryOpt, print_result};
use super::{CliError, CliResult};
use crate::inspect;
use crate::reference::Reference;
use crate::review;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Lines for a terminal.
    Human,
    /// The review as JSON (the shape documented in the README).
    Json,
    /// Markdown for a pull-request comment.
    Md,
}

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The old side: anything `bottle inspect` accepts. Alone, an <agent>:
    /// its lockfile at git's HEAD is the old side, the working one the new.
    pub from: String,
    /// The new side: anything `bottle inspect` accepts.
    pub to: Option<String>,
    /// Same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print the review on stdout.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    #[command(flatten)]
    pub registry: RegistryOpt,
    #[command(flatten)]
    pub project: ProjectOpt,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let registry = args.registry.get();
    let root = args.project.root.as_deref();
    let (from, to) = match &args.to {
        Some(to) => (
            inspect::inspect(&args.from, registry.as_deref(), root).await?,
            inspect::inspect(to, registry.as_deref(), root).await?,
        ),
        None => {
            let agent = match Reference::parse(&args.from) {
                Ok(Reference::Agent(a)) => a,
                _ => {
                    return Err(CliError::usage(format!(
                        "`{}`: with one reference, name an agent (its lockfile is compared with the one at git's HEAD); or name two references",
                        args.from
                    )));
                }
            };
            let new = inspect::inspect(&agent, None, root).await?;
            (inspect::at_git_head(root, &agent)?, new)
        }
    };
    eprintln!("comparing {} with {}", from.origin, to.origin);
    let r = review::review(&from.summary, &to.summary);
    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&r).unwrap_or_default(),
        Format::Md => review::render_markdown(&r).trim_end().to_string(),
        Format::Human => review::render(&r).trim_end().to_string(),
    };
    print_result(&text)?;
    Ok(u8::from(r.grew))
}
