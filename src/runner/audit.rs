//! The durable audit record of a run: every JSON line the sidecar writes
//! (decisions, readiness, leaves minted) appended to
//! `<state>/bottle/runs/<run-id>.jsonl`, where `<state>` is
//! `$BOTTLE_STATE_DIR`, else `$XDG_STATE_HOME`, else `~/.local/state`.
//!
//! Invariants:
//! - Bounded: a run's file is rotated to `<run-id>.jsonl.1` when it reaches
//!   [`MAX_FILE_BYTES`] (one rotated file kept, so at most twice that per
//!   run), and at most [`MAX_RUNS`] runs' records are kept (oldest removed
//!   when a run starts).
//! - Only lines that parse as JSON objects are kept, each at most
//!   [`MAX_LINE_BYTES`]; the sidecar never writes a secret into one (the
//!   builtin proxy redacts names and reasons that carry one).
//! - Files are private to the user (mode 600, directory 700).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_RUNS: usize = 200;
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Directory of the run records.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BOTTLE_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("runs"));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))?;
    Some(base.join("bottle/runs"))
}

/// The record of `run_id` (current file).
pub fn path_of(run_id: &str) -> Option<PathBuf> {
    if run_id.is_empty()
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || run_id.starts_with('.')
    {
        return None;
    }
    dir().map(|d| d.join(format!("{run_id}.jsonl")))
}

/// An open record being appended to.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    written: u64,
}

impl AuditLog {
    /// Open (create) the record of `run_id`, pruning the oldest records
    /// beyond [`MAX_RUNS`]. `None` when there is no state directory or it
    /// cannot be written: the run goes on, and says so.
    pub fn open(run_id: &str) -> Option<AuditLog> {
        let path = path_of(run_id)?;
        let dir = path.parent()?;
        create_private_dir(dir).ok()?;
        prune(dir);
        let file = open_append(&path).ok()?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Some(AuditLog {
            path,
            file,
            written,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `line` if it is a JSON object; rotate at the bound.
    pub fn record(&mut self, line: &str) {
        let line = line.trim();
        if line.len() > MAX_LINE_BYTES || !line.starts_with('{') {
            return;
        }
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).is_err() {
            return;
        }
        if self.written + line.len() as u64 + 1 > MAX_FILE_BYTES {
            let rotated = self.path.with_extension("jsonl.1");
            let _ = std::fs::rename(&self.path, rotated);
            match open_append(&self.path) {
                Ok(f) => {
                    self.file = f;
                    self.written = 0;
                }
                Err(_) => return,
            }
        }
        if self.file.write_all(format!("{line}\n").as_bytes()).is_ok() {
            self.written += line.len() as u64 + 1;
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Remove the oldest records (by modification time) beyond [`MAX_RUNS`].
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if runs.len() < MAX_RUNS {
        return;
    }
    runs.sort();
    let excess = runs.len() + 1 - MAX_RUNS;
    for (_, p) in runs.into_iter().take(excess) {
        let _ = std::fs::remove_file(p.with_extension("jsonl.1"));
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_outside_the_directory() {
        assert!(path_of("../x").is_none());
        assert!(path_of("a/b").is_none());
        assert!(path_of(".hidden").is_none());
        assert!(path_of("").is_none());
    }

    #[test]
    fn rotates_at_the_bound_and_keeps_only_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut log = AuditLog {
            path: path.clone(),
            file: open_append(&path).unwrap(),
            written: MAX_FILE_BYTES - 10,
        };
        log.record("not json");
        log.record("{\"event\":\"decision\",\"verdict\":\"deny\"}");
        assert!(path.with_extension("jsonl.1").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"event\":\"decision\",\"verdict\":\"deny\"}\n");
    }
}
