//! Relaying an established tunnel with a lifetime cap and an idle timeout,
//! counting bytes each way.
//!
//! Invariant: the tunnel ends at the first of: both sides closed, the
//! lifetime cap, or no byte in either direction for the idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared counters of one tunnel.
struct Meter {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Meter {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A stream that counts what is read from it and records activity.
struct Tracked<S> {
    inner: S,
    read: Arc<AtomicU64>,
    meter: Arc<Meter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            this.meter.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub(super) struct Outcome {
    pub up: u64,
    pub down: u64,
    pub end: &'static str,
}

/// Copy both ways until the tunnel ends; `client` → `upstream` is "up".
pub(super) async fn relay<C, U>(
    client: C,
    upstream: U,
    lifetime: Duration,
    idle: Duration,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let meter = Arc::new(Meter {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut c = Tracked {
        inner: client,
        read: up.clone(),
        meter: meter.clone(),
    };
    let mut u = Tracked {
        inner: upstream,
        read: down.clone(),
        meter: meter.clone(),
    };
    let idle_ms = idle.as_millis() as u64;
    let watchdog = async {
        loop {
            let now = meter.epoch.elapsed().as_millis() as u64;
            let since = now.saturating_sub(meter.last_ms.load(Ordering::Relaxed));
            if since >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
        }
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, 64 * 1024, 64 * 1024) => {
            if r.is_ok() { "closed" } else { "connection error" }
        }
        _ = tokio::time::sleep(lifetime) => "lifetime limit",
        _ = watchdog => "idle timeout",
    };
    Outcome {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}
