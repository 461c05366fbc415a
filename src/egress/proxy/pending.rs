//! One request's decision line, written exactly once whatever ends the
//! request.
//!
//! hyper drops a request's future when the client goes away mid-request (an
//! aborted `printf … | nc`), and a stopping proxy's runtime drops the tasks
//! of open tunnels; code after an `.await` then never runs. So the line is not
//! left to the end of the handler: a [`Pending`] is made as soon as a request
//! reaches the handler, [`Pending::finish`] writes the line (and consumes
//! it), and `Drop` writes it instead if the request ended first, saying what
//! was under way. Invariant: every `Pending` writes one line, never two.

use std::sync::Arc;
use std::time::Instant;

use hyper::{Response, StatusCode};

use super::{Body, Proxy, text_response};

pub(crate) struct Pending {
    proxy: Arc<Proxy>,
    method: &'static str,
    host: String,
    port: u16,
    started: Instant,
    /// What `Drop` writes: the verdict so far and what was under way.
    cut: (&'static str, &'static str),
    done: bool,
}

impl Pending {
    /// A request for `target` (as the client wrote it, until parsed).
    pub(crate) fn new(proxy: &Arc<Proxy>, method: &'static str, target: &str) -> Pending {
        Pending {
            proxy: proxy.clone(),
            method,
            host: target.to_string(),
            port: 0,
            started: Instant::now(),
            cut: ("deny", "client went away before the request was checked"),
            done: false,
        }
    }

    /// The parsed, normalized target.
    pub(crate) fn target(&mut self, host: &str, port: u16) {
        self.host = host.to_string();
        self.port = port;
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// What to log if the request ends before `finish`.
    pub(crate) fn under_way(&mut self, verdict: &'static str, what: &'static str) {
        self.cut = (verdict, what);
    }

    pub(crate) fn finish(mut self, verdict: &'static str, reason: String, up: u64, down: u64) {
        self.done = true;
        self.proxy.decide(
            verdict,
            reason,
            self.method,
            &self.host,
            self.port,
            up,
            down,
            self.started,
        );
    }

    /// Log a refusal and build its answer.
    pub(crate) fn refuse(self, status: StatusCode, reason: String, close: bool) -> Response<Body> {
        let resp = text_response(status, &format!("bottle proxy: {reason}"), close);
        self.finish("deny", reason, 0, 0);
        resp
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let (verdict, what) = self.cut;
            self.proxy.decide(
                verdict,
                what,
                self.method,
                &self.host,
                self.port,
                0,
                0,
                self.started,
            );
        }
    }
}
