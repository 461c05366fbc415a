//! Who owns a run: this process's pid, its start time (so a recycled pid is
//! not mistaken for a live owner) and the host name; plus per-run slugs.

use std::io::Read;

/// Start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` if the process does not exist.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past
    // the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn self_start() -> u64 {
    process_start(std::process::id()).unwrap_or(0)
}

/// Is the process that labeled an object still running on this host?
/// Objects owned by another host are treated as alive (we cannot know).
pub fn owner_alive(pid: Option<u32>, start: Option<u64>, host: Option<&str>) -> bool {
    if host.is_some_and(|h| h != hostname()) {
        return true;
    }
    let Some(pid) = pid else { return false };
    match (process_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(labeled)) => now == labeled,
        (Some(_), None) => true,
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Eight random hex digits (from the kernel's CSPRNG) that name one run.
pub fn slug() -> String {
    let mut b = [0u8; 4];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // Still unique per process and instant.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().rotate_left(16);
        b = n.to_le_bytes();
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_dead_pid_is_not() {
        let me = std::process::id();
        let start = self_start();
        assert!(start > 0);
        assert!(owner_alive(Some(me), Some(start), Some(&hostname())));
        // Same pid, different start time: a recycled pid.
        assert!(!owner_alive(Some(me), Some(start + 1), Some(&hostname())));
        assert!(!owner_alive(Some(u32::MAX - 1), None, None));
        assert!(owner_alive(
            Some(u32::MAX - 1),
            None,
            Some("another-host-xyz")
        ));
        assert_ne!(slug(), slug());
        assert_eq!(slug().len(), 8);
    }
}
