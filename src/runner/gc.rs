//! `bottle ps` and `bottle gc`: find every labeled container and network,
//! group them by run, decide from the owner labels whether the owning
//! process is still alive, and remove the leftovers of dead runs in the
//! teardown order (agent, sidecar, networks). A live run is never touched.
//! Likewise the temp files and dirs a killed `bottle` left (a run's
//! `$TMPDIR/bottle-run-*`, a half-written blob or download): each carries
//! its owner in its name (see [`owner::stamp`]) and goes once that owner is
//! gone, whatever its age.
//!
//! Invariant: what `gc` reports removed is what the engine (or the file
//! system) confirms is gone: after the removals the engine is asked again,
//! and whatever is still there is reported as a failure, with the engine's
//! error when it gave one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bollard::Docker;
use serde::Serialize;

use super::owner;
use crate::engine::{self, EngineError, Labeled, ObjectKind};
use crate::plan::{
    LABEL_AGENT, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_ROLE, LABEL_RUN,
    LABEL_STARTED,
};

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub agent: String,
    pub owner_pid: Option<u32>,
    pub owner_host: Option<String>,
    pub owner_alive: bool,
    pub started: Option<u64>,
    pub containers: Vec<ContainerInfo>,
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub role: String,
    pub state: String,
}

pub fn group(objects: Vec<Labeled>) -> Vec<RunInfo> {
    let mut runs: BTreeMap<String, RunInfo> = BTreeMap::new();
    for o in objects {
        let Some(run_id) = o.labels.get(LABEL_RUN).cloned() else {
            continue;
        };
        let get = |k: &str| o.labels.get(k).cloned();
        let entry = runs.entry(run_id.clone()).or_insert_with(|| {
            let pid = get(LABEL_OWNER_PID).and_then(|p| p.parse().ok());
            let start = get(LABEL_OWNER_START).and_then(|p| p.parse().ok());
            let host = get(LABEL_OWNER_HOST);
            RunInfo {
                run_id: run_id.clone(),
                agent: get(LABEL_AGENT).unwrap_or_default(),
                owner_pid: pid,
                owner_alive: owner::owner_alive(pid, start, host.as_deref()),
                owner_host: host,
                started: get(LABEL_STARTED).and_then(|s| s.parse().ok()),
                containers: vec![],
                networks: vec![],
            }
        });
        match o.kind {
            ObjectKind::Container => entry.containers.push(ContainerInfo {
                role: get(LABEL_ROLE).unwrap_or_default(),
                name: o.name,
                state: o.state,
            }),
            ObjectKind::Network => entry.networks.push(o.name),
        }
    }
    let mut out: Vec<RunInfo> = runs.into_values().collect();
    for r in &mut out {
        // Teardown order: agent before sidecar; egress network before internal.
        r.containers
            .sort_by_key(|c| (c.role != "agent", c.name.clone()));
        r.networks
            .sort_by_key(|n| (!n.ends_with("-egress"), n.clone()));
    }
    out
}

/// Every bottle on this engine, live or not.
pub async fn ps(docker: &Docker) -> Result<Vec<RunInfo>, EngineError> {
    Ok(group(engine::list_labeled(docker, LABEL_RUN).await?))
}

/// Something `gc` meant to remove that is still there.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `container`, `network` or `temp`.
    pub kind: &'static str,
    pub name: String,
    pub error: String,
}

/// What a sweep removed (or, dry, would remove) and what it could not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sweep {
    /// Dead runs, each listing only the objects confirmed gone.
    pub runs: Vec<RunInfo>,
    /// Temp files and dirs of dead owners, confirmed gone.
    pub temps: Vec<TempLeftover>,
    pub failed: Vec<Failure>,
}

/// Remove (or, with `dry_run`, list) the runs whose owner is gone. Every
/// object is attempted even if another could not be removed; then the
/// engine is asked again, and only what it no longer has counts as removed.
pub async fn gc(docker: &Docker, dry_run: bool) -> Result<Sweep, EngineError> {
    let mut dead: Vec<RunInfo> = ps(docker)
        .await?
        .into_iter()
        .filter(|r| !r.owner_alive)
        .collect();
    if dry_run {
        return Ok(Sweep {
            runs: dead,
            ..Sweep::default()
        });
    }
    let mut errors: BTreeMap<(&'static str, String), String> = BTreeMap::new();
    for r in &dead {
        for c in &r.containers {
            if let Err(e) = engine::remove_container(docker, &c.name).await {
                errors.insert(("container", c.name.clone()), e.to_string());
            }
        }
        for n in &r.networks {
            if let Err(e) = engine::remove_network(docker, n).await {
                errors.insert(("network", n.clone()), e.to_string());
            }
        }
    }
    let still: BTreeSet<(&'static str, String)> = engine::list_labeled(docker, LABEL_RUN)
        .await?
        .into_iter()
        .map(|o| match o.kind {
            ObjectKind::Container => ("container", o.name),
            ObjectKind::Network => ("network", o.name),
        })
        .collect();
    let mut failed = Vec::new();
    let mut gone = |kind: &'static str, name: &String| {
        let key = (kind, name.clone());
        if !still.contains(&key) {
            return true;
        }
        let error = errors
            .remove(&key)
            .unwrap_or_else(|| "still there after the engine accepted its removal".to_string());
        failed.push(Failure {
            kind,
            name: name.clone(),
            error,
        });
        false
    };
    for r in &mut dead {
        r.containers.retain(|c| gone("container", &c.name));
        r.networks.retain(|n| gone("network", n));
    }
    dead.retain(|r| !r.containers.is_empty() || !r.networks.is_empty());
    Ok(Sweep {
        runs: dead,
        temps: Vec::new(),
        failed,
    })
}

/// Prefix of a run's temp dir under `$TMPDIR` (then the owner stamp).
pub const RUN_DIR_PREFIX: &str = "bottle-run-";

/// Unstamped store temp files (older bottles, small atomic writes) still go
/// by age: older than this, no writer can still be busy with them.
const UNSTAMPED_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A temp file or dir whose owner is gone.
#[derive(Debug, Clone, Serialize)]
pub struct TempLeftover {
    pub path: PathBuf,
    pub bytes: u64,
    /// The dead owner, when the name carries one.
    pub owner_pid: Option<u32>,
}

/// Where temp files live: `$TMPDIR` (run dirs) and the cache's folders
/// (store and download temps), each with the prefix its files carry.
pub fn temp_places(tmp_dir: &Path, cache_root: &Path) -> Vec<(PathBuf, &'static str)> {
    let store = cache_root.join("oci");
    let mut places = vec![(tmp_dir.to_path_buf(), RUN_DIR_PREFIX)];
    places.extend([
        (
            store.join("blobs").join("sha256"),
            crate::oci::store::TEMP_PREFIX,
        ),
        (
            store.join("cache").join("layers"),
            crate::oci::store::TEMP_PREFIX,
        ),
        (store, crate::oci::store::TEMP_PREFIX),
        (
            cache_root.join("fetch").join("sha256"),
            crate::lock::fetch::PART_PREFIX,
        ),
    ]);
    places
}

/// The temp files and dirs in `places` whose owner is gone: stamped with
/// an owner that is no longer running, or (files only) unstamped and older
/// than an hour. Entries of other users are never listed. Unreadable
/// folders are skipped (nothing of ours can be in them).
pub fn stale_temps(places: &[(PathBuf, &'static str)]) -> Vec<TempLeftover> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let mut out = Vec::new();
    for (dir, prefix) in places {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<TempLeftover> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(prefix) {
                    return None;
                }
                let meta = e.metadata().ok().filter(|m| m.uid() == me)?;
                let stale = match owner::Stamp::parse(&name, prefix) {
                    Some(stamp) => !stamp.alive(),
                    None => {
                        *prefix != RUN_DIR_PREFIX
                            && meta.is_file()
                            && meta
                                .modified()
                                .ok()
                                .and_then(|t| t.elapsed().ok())
                                .is_some_and(|age| age >= UNSTAMPED_AGE)
                    }
                };
                stale.then(|| TempLeftover {
                    path: e.path(),
                    bytes: size_of(&e.path()),
                    owner_pid: owner::Stamp::parse(&name, prefix).map(|s| s.pid),
                })
            })
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(found);
    }
    out
}

/// Remove the leftovers; returns those confirmed gone and the failures.
pub fn remove_temps(temps: Vec<TempLeftover>) -> (Vec<TempLeftover>, Vec<Failure>) {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for t in temps {
        let result = if t.path.is_dir() {
            std::fs::remove_dir_all(&t.path)
        } else {
            std::fs::remove_file(&t.path)
        };
        match result {
            Ok(()) => removed.push(t),
            // Its owner's own cleanup may have won the race: gone is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(t),
            Err(e) => failed.push(Failure {
                kind: "temp",
                name: t.path.display().to_string(),
                error: e.to_string(),
            }),
        }
    }
    (removed, failed)
}

/// Bytes in a file, or in the files of a dir tree (symlinks not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn obj(kind: ObjectKind, name: &str, role: &str, pid: u32, start: u64) -> Labeled {
        let mut labels = HashMap::new();
        labels.insert(LABEL_RUN.to_string(), "a-1".to_string());
        labels.insert(LABEL_AGENT.to_string(), "a".to_string());
        labels.insert(LABEL_ROLE.to_string(), role.to_string());
        labels.insert(LABEL_OWNER_PID.to_string(), pid.to_string());
        labels.insert(LABEL_OWNER_START.to_string(), start.to_string());
        labels.insert(LABEL_OWNER_HOST.to_string(), owner::hostname());
        Labeled {
            kind,
            name: name.into(),
            state: "running".into(),
            labels,
        }
    }

    #[test]
    fn groups_by_run_in_teardown_order_with_liveness() {
        let me = std::process::id();
        let start = owner::self_start();
        let runs = group(vec![
            obj(ObjectKind::Network, "bottle-a-1-net", "network", me, start),
            obj(
                ObjectKind::Container,
                "bottle-a-1-sidecar",
                "sidecar",
                me,
                start,
            ),
            obj(
                ObjectKind::Network,
                "bottle-a-1-egress",
                "network",
                me,
                start,
            ),
            obj(ObjectKind::Container, "bottle-a-1", "agent", me, start),
        ]);
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert!(r.owner_alive);
        let names: Vec<&str> = r.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["bottle-a-1", "bottle-a-1-sidecar"]);
        assert_eq!(r.networks, ["bottle-a-1-egress", "bottle-a-1-net"]);

        // Same pid, another start time: the owner is gone (pid recycled).
        let runs = group(vec![obj(
            ObjectKind::Container,
            "bottle-a-1",
            "agent",
            me,
            start + 1,
        )]);
        assert!(!runs[0].owner_alive);
    }
}
