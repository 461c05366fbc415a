//! The teardown guard: remembers what a run created (registered BEFORE each
//! create call, since a cancelled call may still have created the object)
//! and removes it in the one safe order: agent, sidecar, networks, the
//! run's labeled volumes (the home volume normally dies with the sidecar;
//! this catches one whose sidecar someone removed by hand), temp files.
//! Runs from the normal path (`finish`), and from `Drop` on a panic or an
//! early return, on a fresh thread with its own runtime and engine client.

use std::time::Duration;

use bollard::Docker;
use tempfile::TempDir;

use crate::engine::{self, EngineError};

#[derive(Default)]
pub struct Teardown {
    agent: Option<String>,
    sidecar: Option<String>,
    networks: Vec<String>,
    /// Run id whose labeled volumes are removed last.
    run_volumes: Option<String>,
    tempdir: Option<TempDir>,
    done: bool,
}

impl Teardown {
    pub fn new() -> Teardown {
        Teardown::default()
    }

    pub fn agent(&mut self, name: &str) {
        self.agent = Some(name.to_string());
    }

    pub fn sidecar(&mut self, name: &str) {
        self.sidecar = Some(name.to_string());
    }

    pub fn network(&mut self, name: &str) {
        self.networks.push(name.to_string());
    }

    pub fn run_volumes(&mut self, run_id: &str) {
        self.run_volumes = Some(run_id.to_string());
    }

    pub fn tempdir(&mut self, dir: TempDir) {
        self.tempdir = Some(dir);
    }

    /// Remove everything, in order; returns the failures (each step is
    /// attempted even if an earlier one failed).
    pub async fn finish(&mut self, docker: &Docker) -> Vec<EngineError> {
        self.done = true;
        let mut errors = Vec::new();
        let plan = self.take();
        run(docker, plan, &mut errors).await;
        errors
    }

    fn take(&mut self) -> Steps {
        Steps {
            containers: [self.agent.take(), self.sidecar.take()]
                .into_iter()
                .flatten()
                .collect(),
            networks: std::mem::take(&mut self.networks),
            run_volumes: self.run_volumes.take(),
            tempdir: self.tempdir.take(),
        }
    }
}

struct Steps {
    containers: Vec<String>,
    networks: Vec<String>,
    run_volumes: Option<String>,
    tempdir: Option<TempDir>,
}

async fn run(docker: &Docker, steps: Steps, errors: &mut Vec<EngineError>) {
    for c in &steps.containers {
        if let Err(e) = engine::remove_container(docker, c).await {
            errors.push(e);
        }
    }
    // The networks are empty now; remove them together. A network whose
    // last endpoint is still being released refuses removal for a moment:
    // retry briefly.
    let results = futures_util::future::join_all(steps.networks.iter().map(|n| async move {
        let mut last = None;
        for attempt in 0..20u64 {
            match engine::remove_network(docker, n).await {
                Ok(()) => return None,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        last
    }))
    .await;
    errors.extend(results.into_iter().flatten());
    if let Some(run) = &steps.run_volumes {
        if let Err(e) = engine::remove_run_volumes(docker, run).await {
            errors.push(e);
        }
    }
    drop(steps.tempdir);
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let steps = self.take();
        if steps.containers.is_empty() && steps.networks.is_empty() {
            return;
        }
        // We may be unwinding inside the async runtime: blocking on it here
        // would deadlock, so a fresh thread with its own runtime and client
        // does the removal, and we wait for it.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = engine::connect().await else {
                    return;
                };
                let mut errors = Vec::new();
                run(&docker, steps, &mut errors).await;
                for e in errors {
                    eprintln!("bottle: teardown: {e}");
                }
            });
        });
        let _ = handle.join();
    }
}
