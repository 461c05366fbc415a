//! Atomic replacement of small files (lockfiles, egress configs, the blob
//! store's index and layer cache), shared so every writer keeps the same
//! guarantees.
//!
//! Invariants: the bytes go to a `.tmp-*` file in the target's own directory
//! (a rename is atomic only within one file system), which gets its final
//! mode *before* any byte is written (a secret-free file may still be
//! private, and a reader must never see a wider mode than intended), is
//! fsynced, then renamed over the target. A killed writer leaves at most a
//! `.tmp-*` file (in the blob store, `bottle gc` clears those after an
//! hour; the store's blob writers stamp theirs with their owner instead); readers see the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A failed step of [`write_atomic`], with the path it failed on; each
/// module turns it into its own error.
#[derive(Debug)]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Replace `path` with `bytes` atomically, the new file having `mode`
/// (permission bits; the umask does not apply).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError {
            action,
            path,
            source,
        }
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(fail("cannot create a temp file in", dir))?;
    let temp_path = temp.path().to_path_buf();
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(fail("cannot set the mode of", &temp_path))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(fail("cannot write", &temp_path))?;
    temp.persist(path)
        .map_err(|e| fail("cannot rename into", path)(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Best effort: make a rename durable. A failure here does not make the
/// file wrong, only possibly the old one after a power cut.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_with_the_mode_asked_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        fs::write(&p, b"old").unwrap();
        write_atomic(&p, b"new", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn a_missing_directory_names_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("no/such/f");
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert_eq!(e.path, d.path().join("no/such"));
        assert_eq!(e.action, "cannot create a temp file in");
    }
}
