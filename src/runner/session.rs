//! The agent's session: attach before start (so no output is lost), the
//! host terminal in raw mode with window resizes forwarded for interactive
//! runs, plain streaming for `-- cmd…`, and the container's exit code.
//!
//! Invariant: the terminal's settings are restored by a guard's `Drop`, so
//! a panic or a signal never leaves the user's shell in raw mode.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::termios::{self, OptionalActions, Termios};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{ResizeContainerTTYOptions, WaitContainerOptions};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine::{self, EngineError};

/// Saved terminal settings of stdin, restored on drop.
pub(crate) struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Put stdin into raw mode; `None` if it is not a terminal.
    pub(crate) fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// (columns, rows) of the terminal on `fd`.
fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let ws = termios::tcgetwinsize(fd).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

async fn resize(docker: &Docker, name: &str) {
    if let Some((w, h)) =
        terminal_size(std::io::stdout().as_fd()).or_else(|| terminal_size(std::io::stdin().as_fd()))
    {
        let _ = docker
            .resize_container_tty(
                name,
                ResizeContainerTTYOptions {
                    w: w as i32,
                    h: h as i32,
                },
            )
            .await;
    }
}

/// Attach to the created agent, start it, pump I/O until it exits; returns
/// its exit code. `interactive` forwards stdin (and, with `tty`, resizes).
pub async fn run_agent(
    docker: &Docker,
    name: &str,
    tty: bool,
    interactive: bool,
    stop: &mut super::StopRx,
    mut sidecar_lost: super::LostRx,
) -> Result<i64, super::RunError> {
    let attached = engine::attach(docker, name, interactive, false).await?;
    let mut output = attached.output;
    let mut input = attached.input;

    engine::start_container(docker, name).await?;

    let _raw = if tty && interactive {
        resize(docker, name).await;
        RawMode::enter()
    } else {
        None
    };

    let resizer = if tty {
        let docker = docker.clone();
        let name = name.to_string();
        Some(tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                resize(&docker, &name).await;
            }
        }))
    } else {
        None
    };

    let stdin_pump = if interactive {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        // Blocking reads of the terminal live on their own thread; the
        // runtime shuts down without waiting for it.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // Unbuffered: each keystroke goes out as soon as it is read.
                let n = rustix::io::read(std::io::stdin().as_fd(), &mut buf).unwrap_or(0);
                if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    break;
                }
                let _ = input.flush().await;
            }
            let _ = input.shutdown().await;
        }))
    } else {
        drop(input);
        None
    };

    let pump = tokio::spawn(async move {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdErr { message }) => {
                    let _ = err.write_all(&message);
                    let _ = err.flush();
                }
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    let _ = out.write_all(&message);
                    let _ = out.flush();
                }
                Ok(LogOutput::StdIn { .. }) => {}
                Err(_) => break,
            }
        }
    });

    let code = tokio::select! {
        code = wait_exit(docker, name) => code,
        (signal, code) = super::stopped(stop) => Err(super::RunError::Stopped { signal, code }),
        (name, how) = lost(&mut sidecar_lost) => Err(super::RunError::SidecarLost { name, how }),
    };
    if code.is_err() {
        if let Some(r) = &resizer {
            r.abort();
        }
        if let Some(s) = &stdin_pump {
            s.abort();
        }
        pump.abort();
    }
    let code = code?;
    // Drain what is still in flight, but never hang on a stream the engine
    // keeps open.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), pump).await;
    if let Some(r) = resizer {
        r.abort();
    }
    if let Some(s) = stdin_pump {
        s.abort();
    }
    Ok(code)
}

/// Resolves once the sidecar watch reports the sidecar stopped: (its
/// name, how it stopped).
async fn lost(rx: &mut super::LostRx) -> (String, String) {
    loop {
        if let Some(how) = rx.borrow_and_update().clone() {
            return how;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Wait until the container stops; its exit code.
pub async fn wait_exit(docker: &Docker, name: &str) -> Result<i64, super::RunError> {
    let mut s = docker.wait_container(
        name,
        Some(WaitContainerOptions {
            condition: "not-running".into(),
        }),
    );
    match s.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(source)) => Err(EngineError::Api {
            what: format!("waiting for {name}"),
            source,
        }
        .into()),
        None => Err(EngineError::Api {
            what: format!("waiting for {name}"),
            source: BollardError::DockerContainerWaitError {
                error: "wait stream ended without a status".into(),
                code: -1,
            },
        }
        .into()),
    }
}
