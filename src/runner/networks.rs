//! Creating a run's networks on subnets from bottle's pool (`netpool`).
//!
//! Invariants:
//! - Each network gets an explicit [`netpool::SLOT_PREFIX`] subnet, never
//!   one from the engine's default pools, so bottles do not exhaust them.
//! - No lock between concurrent runs: each starts at its own place in the
//!   pool (from its random run id) and skips what the engine and host
//!   already use; when two runs still pick the same slot, the engine
//!   refuses the second ([`EngineError::SubnetTaken`]) and that run moves on
//!   to its next candidate.
//! - The internal and egress networks are created at once and draw from
//!   disjoint halves of the run's candidate list (even and odd positions),
//!   so they never race each other.

use bollard::Docker;

use crate::engine::{self, EngineError, EngineVersion};
use crate::netpool::{Pool, Subnet};
use crate::plan::RunPlan;

/// Tries per network before giving up: each refusal means another run took
/// that slot a moment ago; this many in a row means the pool is nearly full.
const MAX_TRIES: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error(
    "no free subnet for network {network} in pool {pool} after {tries} tries (other networks took them): remove stale bottles with `bottle gc`, or give bottle a larger or unused range with BOTTLE_SUBNET_POOL"
)]
pub struct PoolExhausted {
    pub network: String,
    pub pool: String,
    pub tries: usize,
}

/// Where a run starts looking in the pool: a hash of its (random) id.
pub fn start_slot(run_id: &str) -> u32 {
    // FNV-1a: stable and spread well enough for a starting point.
    run_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Create the plan's internal network (and its egress network, when the
/// run makes one). Returns the subnets they got, internal first.
pub async fn create(
    docker: &Docker,
    plan: &RunPlan,
    version: &EngineVersion,
    pool: Pool,
    taken: &[Subnet],
) -> Result<Vec<Subnet>, RunNetworkError> {
    let net = &plan.networks;
    let labels = plan.network_labels();
    let candidates: Vec<Subnet> = pool
        .candidates(taken, start_slot(&plan.run_id))
        .take(2 * MAX_TRIES)
        .collect();
    let half = |parity: usize| -> Vec<Subnet> {
        candidates.iter().skip(parity).step_by(2).copied().collect()
    };
    let (internal, egress) = tokio::join!(
        with_retry(&net.internal, pool, half(0), |s| {
            engine::create_internal_network(docker, &net.internal, &labels, version, Some(s))
        }),
        async {
            if net.egress_created {
                with_retry(&net.egress, pool, half(1), |s| {
                    engine::create_bridge_network(docker, &net.egress, &labels, Some(s))
                })
                .await
                .map(Some)
            } else {
                Ok(None)
            }
        }
    );
    let mut got = vec![internal?];
    got.extend(egress?);
    Ok(got)
}

#[derive(Debug, thiserror::Error)]
pub enum RunNetworkError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Exhausted(#[from] PoolExhausted),
}

async fn with_retry<F, Fut>(
    name: &str,
    pool: Pool,
    candidates: Vec<Subnet>,
    mut create: F,
) -> Result<Subnet, RunNetworkError>
where
    F: FnMut(Subnet) -> Fut,
    Fut: std::future::Future<Output = Result<(), EngineError>>,
{
    let mut tries = 0;
    for subnet in candidates {
        tries += 1;
        match create(subnet).await {
            Ok(()) => return Ok(subnet),
            Err(EngineError::SubnetTaken { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PoolExhausted {
        network: name.to_string(),
        pool: pool.to_string(),
        tries,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_slots_spread() {
        let pool = Pool::default_pool();
        let starts: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| start_slot(&format!("bottle-hello-{i:06x}")) % pool.slots())
            .collect();
        assert!(starts.len() > 95, "{}", starts.len());
    }

    #[tokio::test]
    async fn retries_past_taken_subnets_and_gives_up_with_a_message() {
        let pool = Pool::parse("10.9.0.0/26").unwrap();
        let c: Vec<Subnet> = pool.candidates(&[], 0).collect();
        let mut seen = vec![];
        let got = with_retry("n", pool, c.clone(), |s| {
            seen.push(s);
            let taken = seen.len() < 3;
            async move {
                if taken {
                    Err(EngineError::SubnetTaken {
                        name: "n".into(),
                        subnet: s,
                    })
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, c[2]);

        let e = with_retry("n", pool, c.clone(), |s| async move {
            Err(EngineError::SubnetTaken {
                name: "n".into(),
                subnet: s,
            })
        })
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("10.9.0.0/26") && msg.contains("after 4 tries"),
            "{msg}"
        );
    }
}
