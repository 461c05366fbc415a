//! `bottle logs <run> [--follow] [--json]`: read a run's audit record (see
//! `runner::audit`): every decision its sidecar made, oldest first, the
//! rotated part before the current one. `--follow` keeps printing lines as
//! the run appends them (across a rotation) until interrupted.

use std::io::{BufRead as _, Read as _, Seek as _, Write as _};
use std::path::Path;
use std::time::Duration;

use super::{CliError, CliResult};
use crate::error::ExitKind;
use crate::runner::audit;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The run id, as `bottle run` and `bottle ps` print it (`<agent>-<slug>`)
    run: String,
    /// Keep printing new lines as the run appends them
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print the JSON lines as recorded instead of a table
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: Args) -> CliResult {
    let path = audit::path_of(&args.run).ok_or_else(|| {
        CliError::usage(format!(
            "`{}` is not a run id (letters, digits, `-`, `_`, `.`); `bottle ps` lists running ones",
            args.run
        ))
    })?;
    let rotated = path.with_extension("jsonl.1");
    if !path.exists() && !rotated.exists() {
        return Err(CliError::new(
            ExitKind::Failure,
            format!(
                "no audit record for run `{}` at {}; records are kept for the last {} runs (set BOTTLE_STATE_DIR if the run used another)",
                args.run,
                path.display(),
                audit::MAX_RUNS
            ),
        ));
    }
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock<'_>, line: &str| {
        let shown = if args.json {
            Some(line.to_string())
        } else {
            human(line)
        };
        if let Some(s) = shown {
            let _ = writeln!(out, "{s}");
        }
    };
    if let Ok(f) = std::fs::File::open(&rotated) {
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            print(&mut out, &line);
        }
    }
    let mut pos = 0u64;
    let mut pending = String::new();
    loop {
        pos = read_from(&path, pos, &mut pending);
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            print(&mut out, line.trim_end());
        }
        let _ = out.flush();
        if !args.follow {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Append what `path` holds past `pos` to `buf`; the new position. A file
/// shorter than `pos` was rotated: read the new one from its start.
fn read_from(path: &Path, pos: u64, buf: &mut String) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return pos;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < pos { 0 } else { pos };
    if f.seek(std::io::SeekFrom::Start(start)).is_err() {
        return pos;
    }
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    buf.push_str(&String::from_utf8_lossy(&bytes));
    start + bytes.len() as u64
}

/// `time verdict method host:port reason` for decisions; other events as
/// `time event …`. Every field is the sidecar's, shown printable only.
fn human(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| {
        v.get(k)
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
    };
    Some(match s("event").as_str() {
        "decision" => format!(
            "{} {:<5} {:<7} {}:{} {}",
            s("time"),
            s("verdict"),
            s("method"),
            s("host"),
            s("port"),
            s("reason")
        ),
        "leaf" => format!("{} leaf  minted for {}", s("time"), s("host")),
        other => format!("{} {other}", s("time")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines() {
        let l = r#"{"time":"T","event":"decision","verdict":"deny","reason":"dlp: secret GITHUB_TOKEN (exact) in the URL","method":"GET","host":"a.test","port":443}"#;
        assert_eq!(
            human(l).unwrap(),
            "T deny  GET     a.test:443 dlp: secret GITHUB_TOKEN (exact) in the URL"
        );
        assert_eq!(human("nope"), None);
        assert_eq!(
            human("{\"time\":\"T\",\"event\":\"decision\",\"host\":\"a\\u001bb\"}").unwrap(),
            "T               a?b: "
        );
    }
}
