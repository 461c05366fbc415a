//! The one vocabulary every module uses to say what kind of failure it had.
//!
//! Modules define their own `thiserror` enums and implement [`Classify`]; the
//! CLI turns the class into the documented exit code in exactly one place
//! (`cli::main`). Nothing below the CLI calls `process::exit`, so destructors
//! (temp files, containers, listeners) always run.

/// How a failure maps onto the exit-code contract in DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// The command ran and its answer is "no" (a check failed, a run failed): exit 1.
    Failure,
    /// Bad usage or bad input (manifest, lockfile, reference): exit 2.
    BadInput,
    /// The environment is missing something (Docker engine, registry, network): exit 3.
    Environment,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Failure => 1,
            ExitKind::BadInput => 2,
            ExitKind::Environment => 3,
        }
    }
}

/// Implemented by every module error so the CLI can pick an exit code
/// without knowing the module's internals.
pub trait Classify {
    fn exit_kind(&self) -> ExitKind;
}
