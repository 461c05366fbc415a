//! Reading the TLS ClientHello at the start of a CONNECT tunnel and pulling
//! out its server name, so the proxy can check that the TLS session is for
//! the host the tunnel was opened to.
//!
//! Invariants: never reads past the end of the ClientHello handshake message
//! (the bytes read are replayed to the upstream verbatim); caps the message
//! at [`MAX_HELLO`] bytes; a malformed hello is an error, not "no SNI".

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest ClientHello accepted (post-quantum key shares make hellos of
/// a few KiB; anything near this is abuse).
pub const MAX_HELLO: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    NotTls,
    Malformed(&'static str),
    TooLarge,
    Io(String),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::NotTls => f.write_str("not a TLS handshake"),
            HelloError::Malformed(what) => write!(f, "malformed ClientHello ({what})"),
            HelloError::TooLarge => f.write_str("ClientHello too large"),
            HelloError::Io(e) => write!(f, "reading ClientHello: {e}"),
        }
    }
}

/// Read TLS records from `r` until one whole ClientHello handshake message is
/// in hand. Returns the raw bytes read (to replay upstream) and the SNI
/// host name, if the hello carries one.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Vec<u8>, Option<String>), HelloError> {
    let mut raw = Vec::with_capacity(2048);
    let mut handshake = Vec::with_capacity(2048);
    loop {
        let mut header = [0u8; 5];
        r.read_exact(&mut header)
            .await
            .map_err(|e| HelloError::Io(e.to_string()))?;
        if header[0] != 22 || header[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Err(HelloError::Malformed("record length"));
        }
        if raw.len() + 5 + len > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        raw.extend_from_slice(&header);
        let start = raw.len();
        raw.resize(start + len, 0);
        r.read_exact(&mut raw[start..])
            .await
            .map_err(|e| HelloError::Io(e.to_string()))?;
        handshake.extend_from_slice(&raw[start..]);
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(HelloError::Malformed(
                    "first handshake message is not ClientHello",
                ));
            }
            let body_len = ((handshake[1] as usize) << 16)
                | ((handshake[2] as usize) << 8)
                | handshake[3] as usize;
            if body_len + 4 > MAX_HELLO {
                return Err(HelloError::TooLarge);
            }
            if handshake.len() >= body_len + 4 {
                let sni = parse_client_hello(&handshake[4..4 + body_len])?;
                return Ok((raw, sni));
            }
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.b.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, HelloError> {
        Ok(self.take(1, what)?[0] as usize)
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// Parse a ClientHello body (after the 4-byte handshake header) and return
/// its server name (RFC 6066 `server_name`, type `host_name`).
pub fn parse_client_hello(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut c = Cursor { b: body };
    c.take(2 + 32, "version/random")?;
    let sid = c.u8("session id length")?;
    c.take(sid, "session id")?;
    let suites = c.u16("cipher suites length")?;
    c.take(suites, "cipher suites")?;
    let comp = c.u8("compression length")?;
    c.take(comp, "compression methods")?;
    if c.b.is_empty() {
        return Ok(None);
    }
    let ext_len = c.u16("extensions length")?;
    let mut ext = Cursor {
        b: c.take(ext_len, "extensions")?,
    };
    let mut found = None;
    while !ext.b.is_empty() {
        let ty = ext.u16("extension type")?;
        let len = ext.u16("extension length")?;
        let data = ext.take(len, "extension data")?;
        if ty != 0 {
            continue;
        }
        if found.is_some() {
            return Err(HelloError::Malformed("duplicate server_name extension"));
        }
        let mut d = Cursor { b: data };
        let list_len = d.u16("server name list length")?;
        let mut list = Cursor {
            b: d.take(list_len, "server name list")?,
        };
        while !list.b.is_empty() {
            let name_type = list.u8("server name type")?;
            let name_len = list.u16("server name length")?;
            let name = list.take(name_len, "server name")?;
            if name_type == 0 {
                if found.is_some() {
                    return Err(HelloError::Malformed("more than one host_name"));
                }
                let s = std::str::from_utf8(name)
                    .map_err(|_| HelloError::Malformed("server name is not ASCII"))?;
                found = Some(s.to_string());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given SNI, as records of `split` bytes.
    pub(crate) fn hello(sni: Option<&str>, split: usize) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend([0, 0]);
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        exts.extend([0, 0x2b, 0, 3, 2, 3, 4]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut out = Vec::new();
        for chunk in hs.chunks(split) {
            out.extend([22, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    #[tokio::test]
    async fn reads_sni_from_one_or_many_records() {
        for split in [1000, 7, 1] {
            let bytes = hello(Some("api.example.com"), split);
            let mut tail = bytes.clone();
            tail.extend(b"after");
            let mut r = &tail[..];
            let (raw, sni) = read_client_hello(&mut r).await.unwrap();
            assert_eq!(raw, bytes);
            assert_eq!(sni.as_deref(), Some("api.example.com"));
            assert_eq!(r, b"after");
        }
        let bytes = hello(None, 1000);
        let (_, sni) = read_client_hello(&mut &bytes[..]).await.unwrap();
        assert_eq!(sni, None);
    }

    #[tokio::test]
    async fn rejects_non_tls() {
        let mut r = &b"SSH-2.0-OpenSSH_9.2\r\n"[..];
        assert_eq!(
            read_client_hello(&mut r).await.unwrap_err(),
            HelloError::NotTls
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn hello_parser_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_client_hello(&b);
        }
    }
}
