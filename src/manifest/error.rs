//! Errors of manifest and recipe loading. Every one names the file (relative
//! to the project root), the field path (`egress.allow[2]`), the line and
//! column where known, what was expected and what to do about it.

use std::fmt;

use crate::error::{Classify, ExitKind};

/// One diagnostic about one field of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// File path, relative to the project root when it is inside it.
    pub file: String,
    /// `(line, column)`, 1-based, when serde or a search of the text found it.
    pub at: Option<(usize, usize)>,
    /// Field path in the JSON document (`egress.allow[2]`); empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub help: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.problem)?;
        } else {
            write!(f, ": field `{}`: {}", self.field, self.problem)?;
        }
        if !self.help.is_empty() {
            write!(f, "\n  help: {}", self.help)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest or recipe is wrong: exit 2.
    #[error("{0}")]
    Invalid(Box<Diag>),
    /// A file the manifest names could not be read for a reason other than
    /// its absence (permissions, I/O): still the user's input, exit 2.
    #[error("{file}: cannot read `{path}`: {source}")]
    Io {
        file: String,
        path: String,
        source: std::io::Error,
    },
}

impl ManifestError {
    pub fn invalid(
        file: impl Into<String>,
        at: Option<(usize, usize)>,
        field: impl Into<String>,
        problem: impl Into<String>,
        help: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid(Box::new(Diag {
            file: file.into(),
            at,
            field: field.into(),
            problem: problem.into(),
            help: help.into(),
        }))
    }

    /// The diagnostic, for tests and `--json` output.
    pub fn diag(&self) -> Option<&Diag> {
        match self {
            ManifestError::Invalid(d) => Some(d),
            ManifestError::Io { .. } => None,
        }
    }
}

impl Classify for ManifestError {
    fn exit_kind(&self) -> ExitKind {
        ExitKind::BadInput
    }
}
