//! `bottle check`.

use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn exec(_args: Args) -> CliResult {
    Err(CliError::not_yet("check"))
}
