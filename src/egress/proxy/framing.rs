//! A watch on the raw bytes of a client connection for ambiguous request
//! framing (request smuggling): a head with both Content-Length and
//! Transfer-Encoding, more than one Content-Length, or a Transfer-Encoding
//! that is anything but exactly one `chunked` coding (`chunked\t`,
//! `chunked, chunked`, `gzip, chunked`, two header lines).
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
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head line or chunk-size line we keep; hyper refuses longer heads.
const MAX_LINE: usize = 64 * 1024;

/// Why a head's framing is refused; stored in the shared flag as its code
/// (0 = nothing seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ambiguity {
    ContentLength = 1,
    BothLengths = 2,
    TransferEncoding = 3,
}

impl Ambiguity {
    /// The refusal reason, as logged and answered.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Ambiguity::ContentLength => "ambiguous framing: duplicate or invalid Content-Length",
            Ambiguity::BothLengths => {
                "ambiguous framing: both Content-Length and Transfer-Encoding"
            }
            Ambiguity::TransferEncoding => {
                "ambiguous framing: Transfer-Encoding must be exactly one `chunked`"
            }
        }
    }

    /// What the scanner raised on this connection, if anything.
    pub(super) fn raised(flag: &AtomicU8) -> Option<Ambiguity> {
        match flag.load(Ordering::SeqCst) {
            1 => Some(Ambiguity::ContentLength),
            2 => Some(Ambiguity::BothLengths),
            3 => Some(Ambiguity::TransferEncoding),
            _ => None,
        }
    }
}

/// Is this raw Transfer-Encoding value exactly one `chunked` coding? Only
/// leading whitespace (the optional space after the colon) is allowed: a
/// trailing tab or space, a list, or a parameter is refused, since
/// upstreams disagree on what they mean.
pub(super) fn exactly_chunked(raw: &[u8]) -> bool {
    let start = raw
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(raw.len());
    raw[start..].eq_ignore_ascii_case(b"chunked")
}

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
    /// Transfer-Encoding header lines seen.
    te: u32,
    /// Every Transfer-Encoding line was exactly `chunked`.
    te_ok: bool,
}

impl HeadState {
    fn new() -> HeadState {
        HeadState {
            first: true,
            te_ok: true,
            ..HeadState::default()
        }
    }
}

/// Scans a client byte stream; see the module doc.
#[derive(Debug)]
pub(super) struct Scanner {
    state: State,
    flag: Arc<AtomicU8>,
}

impl Scanner {
    pub(super) fn new(flag: Arc<AtomicU8>) -> Scanner {
        Scanner {
            state: State::Head(HeadState::new()),
            flag,
        }
    }

    pub(super) fn feed(&mut self, mut data: &[u8]) {
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
                            let name = String::from_utf8_lossy(&line[..colon])
                                .trim()
                                .to_ascii_lowercase();
                            let raw = &line[colon + 1..];
                            let value = String::from_utf8_lossy(raw).trim().to_string();
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
                                    h.te += 1;
                                    h.te_ok &= exactly_chunked(raw);
                                }
                                _ => {}
                            }
                        }
                        continue;
                    }
                    // End of head.
                    let refused = if h.cl.len() > 1 || h.cl_bad {
                        Some(Ambiguity::ContentLength)
                    } else if h.te > 0 && !h.cl.is_empty() {
                        Some(Ambiguity::BothLengths)
                    } else if h.te > 1 || !h.te_ok {
                        Some(Ambiguity::TransferEncoding)
                    } else {
                        None
                    };
                    if let Some(why) = refused {
                        self.flag.store(why as u8, Ordering::SeqCst);
                        self.state = State::Done;
                    } else if h.connect {
                        self.state = State::Done;
                    } else if h.te > 0 {
                        self.state = State::ChunkSize(Vec::new());
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
pub(super) struct Watched<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, flag: Arc<AtomicU8>) -> Watched<S> {
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

    fn raised(chunks: &[&[u8]]) -> Option<Ambiguity> {
        let flag = Arc::new(AtomicU8::new(0));
        let mut s = Scanner::new(flag.clone());
        for c in chunks {
            s.feed(c);
        }
        Ambiguity::raised(&flag)
    }

    fn flagged(chunks: &[&[u8]]) -> bool {
        raised(chunks).is_some()
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

    #[test]
    fn transfer_encoding_must_be_exactly_one_chunked() {
        let head = |te: &str| {
            format!("POST http://a/ HTTP/1.1\r\nHost: a\r\n{te}\r\n\r\n0\r\n\r\n").into_bytes()
        };
        for te in [
            "Transfer-Encoding: chunked\t",
            "Transfer-Encoding: chunked ",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked;x=1",
            "Transfer-Encoding: identity",
            "Transfer-Encoding:",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "transfer-encoding: chunked\r\nX: y\r\nTRANSFER-ENCODING: gzip",
            "Transfer-Encoding : chunked, gzip",
        ] {
            assert_eq!(
                raised(&[&head(te)]),
                Some(Ambiguity::TransferEncoding),
                "{te:?}"
            );
        }
        for te in [
            "Transfer-Encoding: chunked",
            "Transfer-Encoding:chunked",
            "transfer-encoding: \tCHUNKED",
        ] {
            assert_eq!(raised(&[&head(te)]), None, "{te:?}");
        }
        // On the second request of a keep-alive connection, byte by byte.
        let mut two = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        two.extend_from_slice(&head("Transfer-Encoding: chunked, chunked"));
        let bytes: Vec<&[u8]> = two.chunks(1).collect();
        assert_eq!(raised(&bytes), Some(Ambiguity::TransferEncoding));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// A Transfer-Encoding value made of codings, separators and
        /// whitespace passes only when it is one `chunked` after leading
        /// whitespace, however the bytes arrive.
        #[test]
        fn only_one_chunked_coding_passes(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["chunked", "Chunked", "gzip", ",", " ", "\t", ";q=1", "identity"]),
                0..6,
            ),
            split in 1usize..40,
        ) {
            let value: String = parts.concat();
            let req = format!(
                "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{value}\r\n\r\n0\r\n\r\n"
            );
            let chunks: Vec<&[u8]> = req.as_bytes().chunks(split).collect();
            let want_ok = value.trim_start_matches([' ', '\t']).eq_ignore_ascii_case("chunked");
            proptest::prop_assert_eq!(raised(&chunks).is_none(), want_ok, "{:?}", value);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn scanner_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400), split in 1usize..50) {
            let flag = Arc::new(AtomicU8::new(0));
            let mut s = Scanner::new(flag);
            for c in b.chunks(split) {
                s.feed(c);
            }
        }
    }
}
