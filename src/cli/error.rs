//! The CLI's error: any module error plus the exit code it maps to, printed
//! with its causes from one place.

use std::error::Error as StdError;
use std::fmt::Write as _;

use crate::error::{Classify, ExitKind};

#[derive(Debug)]
pub struct CliError {
    kind: ExitKind,
    error: Box<dyn StdError + Send + Sync + 'static>,
}

impl CliError {
    pub fn new(
        kind: ExitKind,
        error: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        CliError {
            kind,
            error: error.into(),
        }
    }

    /// Bad usage or input: exit 2.
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::new(ExitKind::BadInput, msg.into())
    }

    pub fn code(&self) -> u8 {
        self.kind.code()
    }

    /// Print `error: …` and every cause on stderr (cargo's "Caused by:").
    pub fn report(&self) {
        let mut out = format!("error: {}", self.error);
        let mut source = self.error.source();
        if source.is_some() {
            out.push_str("\n\nCaused by:");
        }
        while let Some(cause) = source {
            let _ = write!(out, "\n  {cause}");
            source = cause.source();
        }
        eprintln!("{out}");
    }
}

impl<E> From<E> for CliError
where
    E: Classify + StdError + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        CliError::new(e.exit_kind(), e)
    }
}
