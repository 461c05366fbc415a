//! A watch on the raw bytes of a client connection for ambiguous request
//! framing (request smuggling): a head with both Content-Length and
//! Transfer-Encoding, or more than one Content-Length.
//!
//! hyper resolves such heads itself (Transfer-Encoding wins, equal duplicate
//! lengths collapse) and hands the service a clean header map, so the
//! ambiguity is invisible there. The proxy's policy is stricter: ambiguity
//! is refused with 400 and the connection closed. This wrapper sees every
//! byte before hyper does, follows message boundaries (Content-Length and
//! chunked bodies) so body bytes are never mistaken for headers, and raises
//! a flag the service checks before acting on a request. Scanning stops at a
//! CONNECT head (what follows is tunnel data) or once the flag is raised.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head line or chunk-size line we keep; hyper refuses longer heads.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    Head(HeadState),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers(Vec<u8>),
    Done,
}

#[derive(Debug, Default)]
struct HeadState {
    line: Vec<u8>,
    first: bool,
    connect: bool,
    cl: Vec<u64>,
    cl_bad: bool,
    te: bool,
    chunked: bool,
}

impl HeadState {
    fn new() -> HeadState {
        HeadState {
            first: true,
            ..HeadState::default()
        }
    }
}

/// Scans a client byte stream; see the module doc.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    flag: Arc<AtomicBool>,
}

impl Scanner {
    pub fn new(flag: Arc<AtomicBool>) -> Scanner {
        Scanner {
            state: State::Head(HeadState::new()),
            flag,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::Head(HeadState::new());
                    }
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::ChunkCrlf(2);
                    }
                }
                State::ChunkCrlf(k) => {
                    *k -= 1;
                    data = &data[1..];
                    if *k == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::ChunkSize(line) | State::Trailers(line) => {
                    let b = data[0];
                    data = &data[1..];
                    if b != b'\n' {
                        line.push(b);
                        if line.len() > MAX_LINE {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(line).trim().to_string();
                    let trailers = matches!(self.state, State::Trailers(_));
                    self.state = if trailers {
                        if text.is_empty() {
                            State::Head(HeadState::new())
                        } else {
                            State::Trailers(Vec::new())
                        }
                    } else {
                        let size = text.split(';').next().unwrap_or("").trim();
                        match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n),
                            // hyper will refuse it; nothing more to follow.
                            Err(_) => State::Done,
                        }
                    };
                }
                State::Head(h) => {
                    let b = data[0];
                    data = &data[1..];
                    if b != b'\n' {
                        h.line.push(b);
                        if h.line.len() > MAX_LINE {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut h.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if h.first {
                        // Empty lines before a request line are tolerated.
                        if !line.is_empty() {
                            h.first = false;
                            h.connect = line.starts_with(b"CONNECT ");
                        }
                        continue;
                    }
                    if !line.is_empty() {
                        if let Some(colon) = line.iter().position(|&c| c == b':') {
                            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                            let value = String::from_utf8_lossy(&line[colon + 1..])
                                .trim()
                                .to_string();
                            match name.as_str() {
                                "content-length" => {
                                    for part in value.split(',') {
                                        match part.trim().parse::<u64>() {
                                            Ok(n) => h.cl.push(n),
                                            Err(_) => h.cl_bad = true,
                                        }
                                    }
                                }
                                "transfer-encoding" => {
                                    h.te = true;
                                    h.chunked = value
                                        .rsplit(',')
                                        .next()
                                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
                                }
                                _ => {}
                            }
                        }
                        continue;
                    }
                    // End of head.
                    if h.cl.len() > 1 || (h.te && !h.cl.is_empty()) || h.cl_bad {
                        self.flag.store(true, Ordering::SeqCst);
                        self.state = State::Done;
                    } else if h.connect {
                        self.state = State::Done;
                    } else if h.te {
                        self.state = if h.chunked {
                            State::ChunkSize(Vec::new())
                        } else {
                            State::Done
                        };
                    } else {
                        match h.cl.first() {
                            Some(&n) if n > 0 => self.state = State::Body(n),
                            _ => self.state = State::Head(HeadState::new()),
                        }
                    }
                }
            }
        }
    }
}

/// The client stream with a [`Scanner`] on its read side.
pub struct Watched<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> Watched<S> {
    pub fn new(inner: S, flag: Arc<AtomicBool>) -> Watched<S> {
        Watched {
            inner,
            scanner: Scanner::new(flag),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !matches!(this.scanner.state, State::Done) {
            this.scanner.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut s = Scanner::new(flag.clone());
        for c in chunks {
            s.feed(c);
        }
        flag.load(Ordering::SeqCst)
    }

    #[test]
    fn flags_ambiguous_heads() {
        assert!(flagged(&[
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(flagged(&[
            b"POST http://a/ HTTP/1.1\r\ncontent-length: 4\r\nContent-Length: 4\r\n\r\nabcd"
        ]));
        assert!(flagged(&[
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcd"
        ]));
        // Byte by byte, and on the second request of a connection.
        let req = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nPOST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        let bytes: Vec<&[u8]> = req.chunks(1).collect();
        assert!(flagged(&bytes));
    }

    #[test]
    fn body_bytes_are_not_headers() {
        assert!(!flagged(&[
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 52\r\n\r\n",
            b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ]));
        assert!(!flagged(&[
            b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1e\r\nContent-Length: 1\r\nContent-Len\r\n0\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ]));
        // After CONNECT everything is tunnel data.
        assert!(!flagged(&[
            b"CONNECT a:443 HTTP/1.1\r\n\r\nX\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn scanner_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400), split in 1usize..50) {
            let flag = Arc::new(AtomicBool::new(false));
            let mut s = Scanner::new(flag);
            for c in b.chunks(split) {
                s.feed(c);
            }
        }
    }
}
