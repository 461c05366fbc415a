//! Progress reporting for long operations (uploads, downloads): indicatif
//! bars on stderr when stderr is a terminal, nothing at all otherwise, so
//! logs and CI output stay clean and stdout is never touched.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of bars; cheap to clone (shares the terminal).
#[derive(Clone, Debug)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, silent otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Progress {
                multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            }
        } else {
            Self::hidden()
        }
    }

    /// Never draws (tests, `--json`, pipes).
    pub fn hidden() -> Self {
        Progress { multi: None }
    }

    /// A byte-count bar for one transfer.
    pub fn bytes(&self, len: u64, label: &str) -> Bar {
        let Some(multi) = &self.multi else {
            return Bar(None);
        };
        let bar = multi.add(ProgressBar::new(len));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:<24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        Bar(Some(bar))
    }
}

/// One bar (or nothing). Clone it into a stream to report as bytes move.
#[derive(Clone, Debug)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Finish with a short note (e.g. "skipped: present").
    pub fn finish(&self, note: &str) {
        if let Some(b) = &self.0 {
            b.finish_with_message(format!("{} {note}", b.message()));
        }
    }
}
