//! A minimal SPDY/3.1 frame codec, the part kubectl's port-forward needs (no I/O here).
//!
//! kubectl 1.32 forwards ports over SPDY/3.1 — inside binary WebSocket messages, or on a
//! plain `Upgrade: SPDY/3.1` connection — and no maintained Rust SPDY crate exists. SPDY is
//! small: an 8-byte header per frame (control frames: version, type, flags, 24-bit length;
//! data frames: stream id, flags, length), and name/value header blocks compressed with one
//! zlib stream per direction, primed with the dictionary of the SPDY/3 draft.
//!
//! Flow control (WINDOW_UPDATE) is parsed and ignored: kubectl's spdystream neither enforces
//! nor grants windows, and kubelet does not either.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
pub(crate) const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
#[cfg(test)]
pub(crate) const RST_REFUSED_STREAM: u32 = 3;

/// The protocol allows 16 MiB frames; kubectl writes 32 KiB chunks. Bounding the frames we
/// accept bounds memory per connection.
pub const MAX_FRAME: usize = 1 << 20;
/// Decompressed header blocks larger than this are refused (a zlib bomb guard; kubectl's
/// blocks are a few hundred bytes).
const MAX_HEADER_BLOCK: usize = 64 * 1024;

pub(crate) type Headers = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping(u32),
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type SPDY/3.1 does not define (or NOOP): skipped.
    Unknown(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spdy frame of {0} bytes exceeds the {MAX_FRAME} limit")]
    TooLarge(usize),
    #[error("unsupported spdy version {0}")]
    Version(u16),
    #[error("malformed spdy frame: {0}")]
    Malformed(&'static str),
    #[error("spdy header block: {0}")]
    Compression(String),
}

/// The SPDY/3 header dictionary: length-prefixed common header names and values, then a
/// run of status lines, dates and media types.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,",
            "deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::new();
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Decodes the frames one peer sends; owns that direction's zlib stream.
pub(crate) struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    /// Takes one frame off the front of `buf`, or `Ok(None)` until a whole frame is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(Error::TooLarge(len));
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        buf.advance(8);
        let mut body = buf.split_to(len).freeze();
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first,
                fin,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7FFF) as u16;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let kind = (first & 0xFFFF) as u16;
        let need = |n: usize| {
            if body.len() < n {
                Err(Error::Malformed("control frame too short"))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(10)?;
                let stream = body.get_u32() & 0x7FFF_FFFF;
                body.advance(6); // associated stream, priority, slot
                Frame::SynStream {
                    stream,
                    fin,
                    headers: self.headers(&body)?,
                }
            }
            SYN_REPLY => {
                need(4)?;
                let stream = body.get_u32() & 0x7FFF_FFFF;
                Frame::SynReply {
                    stream,
                    fin,
                    headers: self.headers(&body)?,
                }
            }
            HEADERS => {
                need(4)?;
                let stream = body.get_u32() & 0x7FFF_FFFF;
                Frame::Headers {
                    stream,
                    headers: self.headers(&body)?,
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    stream: body.get_u32() & 0x7FFF_FFFF,
                    status: body.get_u32(),
                }
            }
            SETTINGS => Frame::Settings,
            PING => {
                need(4)?;
                Frame::Ping(body.get_u32())
            }
            GOAWAY => {
                need(4)?;
                let last_stream = body.get_u32() & 0x7FFF_FFFF;
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway {
                    last_stream,
                    status,
                }
            }
            WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate {
                    stream: body.get_u32() & 0x7FFF_FFFF,
                    delta: body.get_u32() & 0x7FFF_FFFF,
                }
            }
            other => Frame::Unknown(other),
        };
        Ok(Some(frame))
    }

    /// Inflates one header block (the connection's zlib stream continues across blocks) and
    /// parses its name/value pairs.
    fn headers(&mut self, block: &[u8]) -> Result<Headers, Error> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            let before = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    // Done once all input is used and the output buffer was not the limit.
                    if input.is_empty() && out.capacity() > out.len() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| Error::Compression(e.to_string()))?;
                }
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(Error::Compression("header block too large".into()));
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(mut b: &[u8]) -> Result<Headers, Error> {
    let malformed = || Error::Malformed("truncated header block");
    let read_str = |b: &mut &[u8]| -> Result<String, Error> {
        if b.len() < 4 {
            return Err(malformed());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(malformed());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(malformed());
    }
    let count = b.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = read_str(&mut b)?;
        let value = read_str(&mut b)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Encodes the frames we send; owns our direction's zlib stream.
pub(crate) struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Encoder { deflate }
    }
}

impl Encoder {
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), Error> {
        match frame {
            Frame::Data { stream, fin, data } => {
                if data.len() > MAX_FRAME {
                    return Err(Error::TooLarge(data.len()));
                }
                out.reserve(8 + data.len());
                out.put_u32(stream & 0x7FFF_FFFF);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                put_u24(out, data.len());
                out.put_slice(data);
            }
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut body = BytesMut::with_capacity(10 + block.len());
                body.put_u32(*stream);
                body.put_u32(0);
                body.put_u16(0);
                body.put_slice(&block);
                control(out, SYN_STREAM, fin_flag(*fin), &body);
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut body = BytesMut::with_capacity(4 + block.len());
                body.put_u32(*stream);
                body.put_slice(&block);
                control(out, SYN_REPLY, fin_flag(*fin), &body);
            }
            Frame::Headers { stream, headers } => {
                let block = self.header_block(headers)?;
                let mut body = BytesMut::with_capacity(4 + block.len());
                body.put_u32(*stream);
                body.put_slice(&block);
                control(out, HEADERS, 0, &body);
            }
            Frame::RstStream { stream, status } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(*stream);
                body.put_u32(*status);
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Settings => control(out, SETTINGS, 0, &0u32.to_be_bytes()),
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_stream,
                status,
            } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(*last_stream);
                body.put_u32(*status);
                control(out, GOAWAY, 0, &body);
            }
            Frame::WindowUpdate { stream, delta } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(*stream);
                body.put_u32(*delta);
                control(out, WINDOW_UPDATE, 0, &body);
            }
            Frame::Unknown(_) => {}
        }
        Ok(())
    }

    /// Serializes and deflates a header block, ending on a sync flush so the peer can
    /// inflate it without waiting for later blocks.
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, Error> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (n, v) in headers {
            raw.put_u32(n.len() as u32);
            raw.put_slice(n.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                return Ok(out);
            }
        }
    }
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

fn put_u24(out: &mut BytesMut, n: usize) {
    out.put_slice(&(n as u32).to_be_bytes()[1..]);
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) {
    out.reserve(8 + body.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_u24(out, body.len());
    out.put_slice(body);
}

/// The value of header `name` (SPDY/3 names are lowercase).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_has_the_spdy3_shape() {
        let d = dictionary();
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
        // The zlib dictionary id kubectl's frames carry is this dictionary's Adler-32.
        assert_eq!(d.len(), 1423);
    }

    #[test]
    fn frames_round_trip_with_one_zlib_stream_per_direction() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream: 3,
                fin: false,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream: 3,
                fin: false,
                headers: Vec::new(),
            },
            Frame::Data {
                stream: 3,
                fin: false,
                data: Bytes::from(vec![42u8; 100_000]),
            },
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream: 5,
                status: RST_REFUSED_STREAM,
            },
            Frame::Ping(7),
            Frame::WindowUpdate {
                stream: 3,
                delta: 65536,
            },
            Frame::GoAway {
                last_stream: 3,
                status: 0,
            },
            Frame::Headers {
                stream: 3,
                headers: h(&[("x", "y")]),
            },
        ];
        let mut enc = Encoder::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        let wire = wire.freeze();
        for step in [1, 7, 1000, wire.len()] {
            let mut dec = Decoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "step {step}");
        }
    }

    #[test]
    fn header_blocks_use_the_dictionary() {
        // A block of dictionary words compresses to far less than its raw size, and the zlib
        // header announces a preset dictionary (FDICT), as Go's spdy framer expects.
        let mut enc = Encoder::default();
        let mut wire = BytesMut::new();
        let headers = h(&[("content-type", "text/plain"), ("user-agent", "kubectl")]);
        enc.encode(
            &Frame::SynReply {
                stream: 1,
                fin: false,
                headers,
            },
            &mut wire,
        )
        .unwrap();
        let block = &wire[12..];
        assert_eq!(block[1] & 0x20, 0x20, "FDICT set");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        // Version 2.
        let mut buf = BytesMut::from(&[0x80, 2, 0, 1, 0, 0, 0, 0][..]);
        assert!(matches!(dec.decode(&mut buf), Err(Error::Version(2))));
        // Too large.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(dec.decode(&mut buf), Err(Error::TooLarge(_))));
        // SYN_STREAM whose header block is not zlib.
        let mut buf = BytesMut::new();
        control(
            &mut buf,
            SYN_STREAM,
            0,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3],
        );
        assert!(dec.decode(&mut buf).is_err());
        // Short control frame.
        let mut buf = BytesMut::new();
        control(&mut buf, RST_STREAM, 0, &[0, 0, 0, 1]);
        assert!(matches!(
            Decoder::default().decode(&mut buf),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn header_lookup_ignores_case() {
        let hs = h(&[("streamType", "data"), ("port", "8080")]);
        assert_eq!(header(&hs, "streamtype"), Some("data"));
        assert_eq!(header(&hs, "requestid"), None);
    }
}
