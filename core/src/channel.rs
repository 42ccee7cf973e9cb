//! Framing of remote commands (exec, attach), without I/O.
//!
//! Two framings meet here. Clients speak Kubernetes' channel protocol: one byte of channel
//! (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize) in front of each WebSocket message, plus,
//! from `v5.channel.k8s.io` on, `[0xFF, 0]` to close stdin. Between the API server and the
//! agent the same channels travel over one tunnel stream (a plain byte stream, no message
//! boundaries), so each frame there carries its length: `[channel][u32 BE length][payload]`.
//! The agent's side of a command therefore needs no WebSocket at all, and the API server is
//! the only place that knows about client protocol versions.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The final Status of the command (JSON), after which the stream closes.
pub const ERROR: u8 = 3;
/// Terminal size, `{"Width": w, "Height": h}`.
pub const RESIZE: u8 = 4;
/// v5's "close" pseudo-channel: the payload names the channel whose input ended.
pub const CLOSE: u8 = 255;

/// The channel protocols kedge speaks, most preferred first (kubectl 1.32 offers v5 first;
/// the Python client offers only v4).
pub const PROTOCOLS: [&str; 2] = [V5, V4];
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// The `Upgrade` token of the tunnel's exec/attach streams.
pub const CHANNEL_UPGRADE: &str = "kedge-channel";
/// The `Upgrade` token of the tunnel's port-forward streams.
pub const TCP_UPGRADE: &str = "kedge-tcp";
/// The `Upgrade` token of a relayed UDP flow (between nodes behind different NATs): after
/// `101` the stream carries datagrams, each as a 2-byte big-endian length and its bytes.
pub const UDP_UPGRADE: &str = "kedge-udp";
/// The relay's kind asked for by an `Upgrade` header value: [`TCP_UPGRADE`] or
/// [`UDP_UPGRADE`] (case-insensitive), `None` for anything else.
pub fn relay_upgrade(value: &str) -> Option<&'static str> {
    [TCP_UPGRADE, UDP_UPGRADE]
        .into_iter()
        .find(|t| value.eq_ignore_ascii_case(t))
}

/// The largest datagram a relayed UDP flow carries (IPv4's UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_507;
/// The agent's kubelet-router path a relayed stream (from another node, through the server)
/// arrives on: the server's side and the agent's share it.
pub const RELAY_PATH: &str = "/relay";

/// The agent's output read size: one frame per read.
pub const CHUNK: usize = 32 * 1024;
/// How far an attach session reads its client's stream ahead of a container's full stdin,
/// only to see the client leave; past it the client waits, as for the process's pipe. (A
/// client that left behind more unread input than this is seen once the process reads, or
/// ends.) The API server's relay reads ahead by the same amount.
pub const READ_AHEAD: usize = 4 * CHUNK;

/// A tunnel frame is refused past this: stdin and output chunks are far smaller (32 KiB
/// reads), so a bigger length means a broken peer, and memory stays bounded.
pub const MAX_FRAME: usize = 1 << 20;

/// One framed message between the API server and the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub channel: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(channel: u8, payload: impl Into<Bytes>) -> Self {
        Frame {
            channel,
            payload: payload.into(),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.payload.len());
        out.put_u8(self.channel);
        out.put_u32(self.payload.len() as u32);
        out.put_slice(&self.payload);
    }

    /// Takes one complete frame off the front of `buf`; `Ok(None)` until enough bytes are
    /// there.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "stream frame of {len} bytes exceeds the {MAX_FRAME} limit"
            ));
        }
        if buf.len() < 5 + len {
            buf.reserve(5 + len - buf.len());
            return Ok(None);
        }
        let channel = buf[0];
        buf.advance(5);
        Ok(Some(Frame {
            channel,
            payload: buf.split_to(len).freeze(),
        }))
    }
}

/// What a client WebSocket message means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Stdin(Bytes),
    /// stdin ended (v5 close of channel 0).
    StdinClosed,
    Resize {
        width: u16,
        height: u16,
    },
    /// Empty messages, closes of other channels, unknown channels: nothing to do.
    Ignored,
}

/// Parses one binary message of a channel-protocol client.
pub fn client_message(msg: &[u8], v5: bool) -> ClientMessage {
    let Some((&channel, rest)) = msg.split_first() else {
        return ClientMessage::Ignored;
    };
    match channel {
        STDIN => ClientMessage::Stdin(Bytes::copy_from_slice(rest)),
        RESIZE => match parse_resize(rest) {
            Some((width, height)) => ClientMessage::Resize { width, height },
            None => ClientMessage::Ignored,
        },
        CLOSE if v5 && rest.first() == Some(&STDIN) => ClientMessage::StdinClosed,
        _ => ClientMessage::Ignored,
    }
}

/// `{"Width":80,"Height":24}` → (80, 24).
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let dim = |k: &str| v.get(k)?.as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// The Status sent on the error channel when the command ends, as kubelet words it.
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The Status for a command that could not run or broke off (no exit code).
pub fn failure_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let frames = [
            Frame::new(STDOUT, &b"hello"[..]),
            Frame::new(STDERR, Bytes::new()),
            Frame::new(ERROR, vec![7u8; 70_000]),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        for step in [1, 3, 4096, wire.len()] {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(f) = Frame::decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames, "step {step}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = BytesMut::from(&[1u8, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(Frame::decode(&mut buf).is_err());
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            client_message(b"\x00abc", true),
            ClientMessage::Stdin(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            client_message(&[CLOSE, 0], true),
            ClientMessage::StdinClosed
        );
        // v4 has no close signal: 0xFF is just an unknown channel.
        assert_eq!(client_message(&[CLOSE, 0], false), ClientMessage::Ignored);
        assert_eq!(
            client_message(b"\x04{\"Width\":120,\"Height\":40}", true),
            ClientMessage::Resize {
                width: 120,
                height: 40
            }
        );
        assert_eq!(client_message(b"\x04{bad", true), ClientMessage::Ignored);
        assert_eq!(client_message(b"", true), ClientMessage::Ignored);
    }

    #[test]
    fn exit_statuses_carry_the_code_as_kubelet_does() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
