//! `bottle ps` and `bottle gc`: find every labeled container and network,
//! group them by run, decide from the owner labels whether the owning
//! process is still alive, and remove the leftovers of dead runs in the
//! teardown order (agent, sidecar, networks). A live run is never touched.

use std::collections::BTreeMap;

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

/// Remove (or, with `dry_run`, list) the runs whose owner is gone. Every
/// object is attempted even if another could not be removed; the first
/// failure is returned after the sweep.
pub async fn gc(docker: &Docker, dry_run: bool) -> Result<Vec<RunInfo>, EngineError> {
    let dead: Vec<RunInfo> = ps(docker)
        .await?
        .into_iter()
        .filter(|r| !r.owner_alive)
        .collect();
    if dry_run {
        return Ok(dead);
    }
    let mut first_error = None;
    for r in &dead {
        for c in &r.containers {
            if let Err(e) = engine::remove_container(docker, &c.name).await {
                first_error.get_or_insert(e);
            }
        }
        for n in &r.networks {
            if let Err(e) = engine::remove_network(docker, n).await {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(dead),
    }
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
