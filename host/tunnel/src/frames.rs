//! The writing half of a framed tunnel stream (exec, attach): frames queued by any number of
//! senders, written in batches. The framing itself is [`kedge_core::channel`]'s.

use bytes::BytesMut;
use kedge_core::channel::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Writes frames to the tunnel until every sender is gone, then closes our side.
pub async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) {
    let mut buf = BytesMut::new();
    while let Some(f) = rx.recv().await {
        f.encode(&mut buf);
        // Send what else is queued along with it.
        while let Ok(f) = rx.try_recv() {
            f.encode(&mut buf);
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = w.shutdown().await;
}
