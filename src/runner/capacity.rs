//! Admission: can the engine and its host take one more bottle? Asked
//! before a run creates anything, so a refusal leaves nothing behind and
//! says why, how many bottles run, and what to do. `bottle doctor` prints
//! the same facts.
//!
//! Invariants:
//! - [`admit`] is pure: [`Capacity`] (read by [`survey`]) and a [`Demand`]
//!   in, a decision out.
//! - A bottle is admitted when (1) its pool has a free subnet for each
//!   network the run creates, (2) the host has memory available now for
//!   the bottle's full limits (agent plus sidecar; limits are caps, so
//!   bottles that use less than theirs leave room for more), and (3) the
//!   host's task count plus the bottle's pids limits stays under the
//!   kernel's ceiling. Host facts are read only when the engine is on this
//!   host; otherwise memory is judged against the engine's total.
//! - Concurrent runs may each be admitted against the same snapshot; the
//!   engine's refusal of an overlapping subnet remains the arbiter for
//!   addresses (see `runner::networks`).

use bollard::Docker;

use crate::engine::{self, EngineError};
use crate::netpool::{Pool, Subnet};

/// What the engine and host have, read once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capacity {
    /// Bottles (agent containers) that exist now, started or starting.
    pub running: usize,
    pub pool: String,
    pub pool_slots: u32,
    /// Pool slots that overlap no engine network and no host route.
    pub free_subnets: u32,
    /// Subnets already taken: every engine network's, and the host's routes.
    #[serde(skip)]
    pub taken: Vec<Subnet>,
    /// The engine's memory (its `MemTotal`).
    pub memory_total_mib: Option<u64>,
    /// `MemAvailable` of this host, when the engine runs here.
    pub memory_available_mib: Option<u64>,
    /// Tasks (threads) on this host now, and the kernel's ceiling
    /// (the lower of `pid_max` and `threads-max`), when the engine runs here.
    pub tasks: Option<u64>,
    pub task_max: Option<u64>,
}

/// What one more bottle needs.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub subnets: u32,
    pub memory_mib: u64,
    pub pids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no free subnet for this bottle's networks in pool {pool} ({free} of {slots} free; it needs {needed}; {running} bottles exist): remove stale ones with `bottle gc`, stop some (`bottle ps`), or give bottle a larger or unused range with BOTTLE_SUBNET_POOL (e.g. 10.213.0.0/16)"
    )]
    Addresses {
        pool: String,
        free: u32,
        slots: u32,
        needed: u32,
        running: usize,
    },
    #[error(
        "this bottle may use up to {needed} MiB (agent and sidecar limits) but the host has {available} MiB available ({running} bottles running): stop some (`bottle ps`), or lower the limit with --memory"
    )]
    Memory {
        needed: u64,
        available: u64,
        running: usize,
    },
    #[error(
        "this bottle may start {needed} processes but the host runs {tasks} of at most {max} ({running} bottles running): stop some (`bottle ps`), or lower the limit with --pids"
    )]
    Pids {
        needed: u64,
        tasks: u64,
        max: u64,
        running: usize,
    },
}

impl crate::error::Classify for Refusal {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::Environment
    }
}

/// The decision; the first shortfall found.
pub fn admit(c: &Capacity, d: &Demand) -> Result<(), Refusal> {
    if c.free_subnets < d.subnets {
        return Err(Refusal::Addresses {
            pool: c.pool.clone(),
            free: c.free_subnets,
            slots: c.pool_slots,
            needed: d.subnets,
            running: c.running,
        });
    }
    if let Some(available) = c.memory_available_mib.or(c.memory_total_mib)
        && d.memory_mib > available
    {
        return Err(Refusal::Memory {
            needed: d.memory_mib,
            available,
            running: c.running,
        });
    }
    if let (Some(tasks), Some(max)) = (c.tasks, c.task_max)
        && tasks.saturating_add(d.pids) > max
    {
        return Err(Refusal::Pids {
            needed: d.pids,
            tasks,
            max,
            running: c.running,
        });
    }
    Ok(())
}

/// Read what the engine and (when the engine is local) the host have.
/// `memory_total`: the engine's, from its `/info` (the runner reads that
/// once, with the engine's security options).
pub async fn survey(
    docker: &Docker,
    pool: Pool,
    memory_total: Option<u64>,
) -> Result<Capacity, EngineError> {
    let (subnets, running) = tokio::join!(
        engine::network_subnets(docker),
        engine::count_bottles(docker),
    );
    let mut taken = subnets?;
    let local = engine::is_local();
    let mut host = HostFacts::default();
    if local {
        host = HostFacts::read();
        taken.extend(host.routes.iter().copied());
    }
    Ok(Capacity {
        running: running?,
        pool: pool.to_string(),
        pool_slots: pool.slots(),
        free_subnets: pool.free(&taken),
        taken,
        memory_total_mib: memory_total.map(|b| b / (1024 * 1024)),
        memory_available_mib: host.available_mib,
        tasks: host.tasks,
        task_max: host.task_max,
    })
}

#[derive(Debug, Default)]
struct HostFacts {
    routes: Vec<Subnet>,
    available_mib: Option<u64>,
    tasks: Option<u64>,
    task_max: Option<u64>,
}

impl HostFacts {
    /// Unreadable files (no /proc: not Linux) leave a fact unknown, which
    /// admits rather than refuses.
    fn read() -> HostFacts {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let number = |p: &str| read(p).and_then(|s| s.trim().parse::<u64>().ok());
        let task_max = match (
            number("/proc/sys/kernel/pid_max"),
            number("/proc/sys/kernel/threads-max"),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        HostFacts {
            routes: read("/proc/net/route")
                .map(|t| crate::netpool::parse_routes(&t))
                .unwrap_or_default(),
            available_mib: read("/proc/meminfo").and_then(|t| meminfo_available_mib(&t)),
            tasks: read("/proc/loadavg").and_then(|t| loadavg_tasks(&t)),
            task_max,
        }
    }
}

fn meminfo_available_mib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// `/proc/loadavg`'s fourth field is `running/total` scheduling entities.
fn loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capacity {
        Capacity {
            running: 3,
            pool: "198.18.0.0/15".into(),
            pool_slots: 8192,
            free_subnets: 10,
            taken: vec![],
            memory_total_mib: Some(24_000),
            memory_available_mib: Some(2_000),
            tasks: Some(500),
            task_max: Some(10_000),
        }
    }

    fn demand() -> Demand {
        Demand {
            subnets: 2,
            memory_mib: 512,
            pids: 192,
        }
    }

    #[test]
    fn admits_when_everything_fits() {
        assert_eq!(admit(&cap(), &demand()), Ok(()));
    }

    #[test]
    fn refuses_each_shortfall_with_the_count_and_what_to_do() {
        let mut c = cap();
        c.free_subnets = 1;
        let e = admit(&c, &demand()).unwrap_err();
        assert!(matches!(
            e,
            Refusal::Addresses {
                free: 1,
                needed: 2,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("3 bottles exist") && msg.contains("BOTTLE_SUBNET_POOL"),
            "{msg}"
        );

        let e = admit(
            &cap(),
            &Demand {
                memory_mib: 4096,
                ..demand()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::Memory {
                    available: 2000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--memory"));

        let mut c = cap();
        c.tasks = Some(9_900);
        let e = admit(&c, &demand()).unwrap_err();
        assert!(matches!(e, Refusal::Pids { .. }), "{e}");
        assert!(e.to_string().contains("--pids"));
    }

    #[test]
    fn remote_engines_are_judged_by_their_total_memory() {
        let mut c = cap();
        c.memory_available_mib = None;
        c.tasks = None;
        assert_eq!(
            admit(
                &c,
                &Demand {
                    memory_mib: 4096,
                    ..demand()
                }
            ),
            Ok(())
        );
        let e = admit(
            &c,
            &Demand {
                memory_mib: 30_000,
                ..demand()
            },
        )
        .unwrap_err();
        assert!(matches!(
            e,
            Refusal::Memory {
                available: 24_000,
                ..
            }
        ));
    }

    #[test]
    fn host_files() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(meminfo_available_mib(meminfo), Some(20_000));
        assert_eq!(meminfo_available_mib("MemTotal: 1 kB\n"), None);
        assert_eq!(loadavg_tasks("0.52 0.58 0.59 2/1183 12345\n"), Some(1183));
        assert_eq!(loadavg_tasks("garbage"), None);
    }
}
