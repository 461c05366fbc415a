//! Who owns a run: this process's pid, its start time (so a recycled pid is
//! not mistaken for a live owner) and the host name; plus per-run slugs.
//!
//! The same owner is stamped into the names of the temp files and dirs
//! bottle leaves while it works (`<base><pid>-<start>-<host>-<random>`: a
//! run's `$TMPDIR/bottle-run-*`, a blob or download being written), so `gc`
//! can tell a dead writer's leftovers from a live one's by the owner, never
//! by age.

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
    // uname's nodename is the kernel's hostname, what gethostname returns.
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// A temp name prefix carrying this process as owner:
/// `<base><pid>-<start>-<host>-` (the host as eight hex digits of its
/// name's SHA-256, so a cache shared over NFS never mistakes another
/// machine's live writer for a dead one of ours).
pub fn stamp(base: &str) -> String {
    stamp_for(base, std::process::id(), self_start())
}

/// [`stamp`] for another process of this host (tests make a dead one's).
pub fn stamp_for(base: &str, pid: u32, start: u64) -> String {
    format!("{base}{pid}-{start}-{}-", host_tag(&hostname()))
}

/// The owner stamped into `name` after `base`, if it carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub pid: u32,
    pub start: u64,
    host: u32,
}

impl Stamp {
    /// Read the owner from a name made with [`stamp`]`(base)`.
    pub fn parse(name: &str, base: &str) -> Option<Stamp> {
        let mut parts = name.strip_prefix(base)?.splitn(4, '-');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let host = parts.next().filter(|h| h.len() == 8)?;
        let host = u32::from_str_radix(host, 16).ok()?;
        parts.next()?;
        Some(Stamp { pid, start, host })
    }

    /// Is the owner still running? A stamp from another host counts as
    /// alive (we cannot know).
    pub fn alive(&self) -> bool {
        if format!("{:08x}", self.host) != host_tag(&hostname()) {
            return true;
        }
        owner_alive(Some(self.pid), Some(self.start), None)
    }
}

fn host_tag(host: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(host.as_bytes())[..4])
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

    #[test]
    fn a_stamped_name_names_its_owner() {
        let name = format!("{}Ab3xYz", stamp(".tmp-"));
        let s = Stamp::parse(&name, ".tmp-").unwrap();
        assert_eq!((s.pid, s.start), (std::process::id(), self_start()));
        assert!(s.alive());
        // The same pid with another start time: the owner is gone.
        let recycled = name.replacen(
            &format!("-{}-", self_start()),
            &format!("-{}-", self_start() + 1),
            1,
        );
        assert!(!Stamp::parse(&recycled, ".tmp-").unwrap().alive());
        // Names without a stamp (older bottles, other tools) have no owner.
        assert_eq!(Stamp::parse(".tmp-Ab3xYz", ".tmp-"), None);
        assert_eq!(Stamp::parse("bottle-run-x1y2", "bottle-run-"), None);
        assert_eq!(Stamp::parse(&name, "bottle-run-"), None);
    }
}
