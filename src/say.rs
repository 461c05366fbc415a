//! `println!`, `eprintln!`, `print!` and `eprint!` for the whole crate that
//! never panic. std's versions panic when the write fails, and with SIGPIPE
//! ignored (Rust's default) a closed pipe is such a failure: `bottle push …
//! 2>&1 | head -1` ended in a panic (exit 101) instead of the command's own
//! exit code, and a panic mid-run skips the teardown guards. A closed pipe
//! is not an error (ripgrep's rule); the command carries on and still exits
//! with its own code. Results that must arrive use `cli::common::print_result`,
//! which reports other write errors.
//!
//! Invariant: these macros are declared in `lib.rs` before every module, so
//! they shadow std's in the whole crate (textual macro scope wins over the
//! prelude).

use std::fmt::Arguments;
use std::io::Write;

/// Write to stderr, ignoring any failure (closed pipe, full disk).
pub(crate) fn to_stderr(args: Arguments<'_>, newline: bool) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    if newline {
        let _ = err.write_all(b"\n");
    }
}

/// Write to stdout, ignoring any failure; stdout is line-buffered, so flush
/// here where the error can still be swallowed rather than at exit.
pub(crate) fn to_stdout(args: Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    if newline {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

macro_rules! eprintln {
    () => { $crate::say::to_stderr(::std::format_args!(""), true) };
    ($($arg:tt)*) => { $crate::say::to_stderr(::std::format_args!($($arg)*), true) };
}

macro_rules! eprint {
    ($($arg:tt)*) => { $crate::say::to_stderr(::std::format_args!($($arg)*), false) };
}

macro_rules! println {
    () => { $crate::say::to_stdout(::std::format_args!(""), true) };
    ($($arg:tt)*) => { $crate::say::to_stdout(::std::format_args!($($arg)*), true) };
}

#[allow(unused_macros)] // for symmetry: a future `print!` must not panic either
macro_rules! print {
    ($($arg:tt)*) => { $crate::say::to_stdout(::std::format_args!($($arg)*), false) };
}
