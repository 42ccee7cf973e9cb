//! The framed form of a followed container log, between a node's agent and the server: each
//! record after a header line `<cursor> <length>\n` saying where the record ends in its file,
//! so the server can resume a `kubectl logs -f` right after the last record it passed on
//! when the node's tunnel broke.

use bytes::Bytes;

/// A header is at most three 20-digit numbers, two dashes, a space and a length.
const MAX_HEADER: usize = 96;
/// A record is at most 16 KiB of text (the CRI split); timestamps and slack on top.
const MAX_RECORD: usize = 1 << 20;

/// A point in one of a log's files: the file (device and inode, which survive rotation's
/// rename) and a byte offset just past a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCursor {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.dev, self.ino, self.offset)
    }
}

impl std::str::FromStr for LogCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a log cursor (DEV-INO-OFFSET)");
        let mut parts = s.split('-').map(|p| p.parse::<u64>());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(dev)), Some(Ok(ino)), Some(Ok(offset)), None) => {
                Ok(LogCursor { dev, ino, offset })
            }
            _ => Err(bad()),
        }
    }
}

/// Frames: each record rendered as the client asked, after a header line
/// `<cursor> <length>\n`; the stream's real end (the container ended, or a non-followed read
/// is done) is the empty frame [`Frame::END`], so a stream cut short by the network, which
/// lacks it, is told apart.
pub struct Frame;

impl Frame {
    /// The last frame of a stream that ended for real.
    pub const END: &'static [u8] = b"0-0-0 0\n";

    /// Whether a split frame is [`Frame::END`].
    pub fn is_end(cursor: &LogCursor, record: &[u8]) -> bool {
        *cursor
            == LogCursor {
                dev: 0,
                ino: 0,
                offset: 0,
            }
            && record.is_empty()
    }

    /// Splits the complete frames off the front of `buf`: (cursor, rendered record) pairs.
    /// What is left is an incomplete frame. `Err` when the stream is not framed.
    pub fn split(buf: &mut bytes::BytesMut) -> Result<Vec<(LogCursor, Bytes)>, String> {
        let mut out = Vec::new();
        loop {
            let Some(nl) = buf.iter().take(MAX_HEADER).position(|b| *b == b'\n') else {
                if buf.len() >= MAX_HEADER {
                    return Err(format!("a log frame header longer than {MAX_HEADER} bytes"));
                }
                return Ok(out);
            };
            let head = std::str::from_utf8(&buf[..nl]).map_err(|e| e.to_string())?;
            let (cursor, len) = head
                .split_once(' ')
                .ok_or_else(|| format!("bad log frame header {head:?}"))?;
            let cursor: LogCursor = cursor.parse()?;
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad log frame length in {head:?}"))?;
            if len > MAX_RECORD {
                return Err(format!("a log frame of {len} bytes"));
            }
            if buf.len() < nl + 1 + len {
                return Ok(out);
            }
            let _ = buf.split_to(nl + 1);
            out.push((cursor, buf.split_to(len).freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_whole_and_wait_for_the_rest() {
        let mut buf = bytes::BytesMut::from(&b"1-2-30 4\nab\n\n3-4-5 2\nx"[..]);
        let got = Frame::split(&mut buf).unwrap();
        assert_eq!(
            got,
            [(
                LogCursor {
                    dev: 1,
                    ino: 2,
                    offset: 30
                },
                Bytes::from_static(b"ab\n\n")
            )]
        );
        assert_eq!(&buf[..], b"3-4-5 2\nx");
        buf.extend_from_slice(b"y");
        assert_eq!(Frame::split(&mut buf).unwrap().len(), 1);
        assert!(buf.is_empty());
        for bad in [
            &b"nonsense\n"[..],
            b"1-2 3\n",
            b"1-2-3 x\n",
            b"1-2-3 99999999\n",
        ] {
            assert!(
                Frame::split(&mut bytes::BytesMut::from(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(Frame::split(&mut bytes::BytesMut::from(&[b'7'; 200][..])).is_err());
        assert_eq!("1-2-3".parse::<LogCursor>().unwrap().to_string(), "1-2-3");
    }
}
