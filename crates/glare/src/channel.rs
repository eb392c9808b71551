//! [`DataChannel`]: messages with back-pressure, and a byte-stream adapter.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use glare_rtc::{ChannelHandle, WriteError};
use glare_udp::ConnectionHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::transport::{CH_CLOSED, CH_OPEN, ChanShared, Link};
use crate::{Error, ErrorKind};

/// One data-channel message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8; invalid sequences from the peer are replaced).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The message's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(s) => s.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is binary.
    pub fn is_binary(&self) -> bool {
        matches!(self, Self::Binary(_))
    }
}

/// The sending half of a [`DataChannel`]: cheap to clone, usable from many tasks.
#[derive(Clone, Debug)]
pub struct ChannelSender {
    conn: ConnectionHandle<Link>,
    handle: ChannelHandle,
    shared: Arc<ChanShared>,
}

/// How long a writer waits for a wake-up before it tries again anyway (a backstop:
/// the reactor wakes it when the channel opens, drains or closes).
const RETRY: Duration = Duration::from_millis(50);
/// How many times a write may find the channel "not open" although it was told it
/// is open (a close not yet published) before it gives up.
const MAX_NOT_OPEN: u32 = 100;

impl ChannelSender {
    /// Sends a binary message. Waits while the channel is still opening and while
    /// its send buffer is full (back-pressure); fails once it is closed.
    pub async fn send(&self, data: Bytes) -> Result<(), Error> {
        self.write(true, data).await
    }

    /// Sends a text message (see [`send`](Self::send)).
    pub async fn send_text(&self, text: &str) -> Result<(), Error> {
        self.write(false, Bytes::copy_from_slice(text.as_bytes()))
            .await
    }

    async fn write(&self, binary: bool, data: Bytes) -> Result<(), Error> {
        let mut not_open = 0;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.state.load(Ordering::Acquire) {
                CH_CLOSED => return Err(Error::closed("the data channel is closed")),
                CH_OPEN => {
                    let h = self.handle;
                    let d = data.clone();
                    match self
                        .conn
                        .call(move |link, _| link.write(h, binary, &d))
                        .await?
                    {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(WriteError::NotOpen(_) | WriteError::UnknownChannel(_)) => {
                            not_open += 1;
                            if not_open > MAX_NOT_OPEN {
                                return Err(Error::closed("the data channel is not open"));
                            }
                        }
                        Err(e) => {
                            return Err(Error::with_source(
                                ErrorKind::InvalidInput,
                                "data channel write refused",
                                e,
                            ));
                        }
                    }
                }
                _ => {}
            }
            let _ = tokio::time::timeout(RETRY, notified).await;
        }
    }

    /// Waits until the channel is open (fails if it closes first).
    pub async fn opened(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.state.load(Ordering::Acquire) {
                CH_OPEN => return Ok(()),
                CH_CLOSED => return Err(Error::closed("the data channel closed")),
                _ => {}
            }
            let _ = tokio::time::timeout(RETRY, notified).await;
        }
    }

    /// Bytes written and not yet acknowledged by the peer.
    pub async fn buffered_amount(&self) -> Result<usize, Error> {
        let h = self.handle;
        Ok(self
            .conn
            .call(move |link, _| link.conn.buffered_amount(h))
            .await?)
    }

    /// Closes the channel (both sides see it end).
    pub async fn close(&self) {
        let h = self.handle;
        // Unknown connection: the link, and so the channel, is gone already.
        let _ = self
            .conn
            .call(move |link, _| link.conn.close_channel(h))
            .await;
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CH_CLOSED
    }
}

/// A data channel: ordered or not, reliable or not, as opened.
///
/// [`send`](Self::send) waits under back-pressure (nothing is dropped);
/// [`recv`](Self::recv) yields messages in the order the channel delivers them and
/// `None` once it is closed. [`into_stream`](Self::into_stream) turns it into an
/// `AsyncRead + AsyncWrite` byte stream.
#[derive(Debug)]
pub struct DataChannel {
    sender: ChannelSender,
    label: String,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl DataChannel {
    pub(crate) fn new(
        conn: ConnectionHandle<Link>,
        handle: ChannelHandle,
        label: String,
        rx: mpsc::UnboundedReceiver<Message>,
        shared: Arc<ChanShared>,
    ) -> Self {
        Self {
            sender: ChannelSender {
                conn,
                handle,
                shared,
            },
            label,
            rx,
        }
    }

    /// The channel's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A number that identifies the channel within its connection (stable across
    /// renegotiations and glare rollbacks).
    pub fn id(&self) -> u64 {
        self.sender.handle.get()
    }

    /// A sending half for other tasks.
    pub fn sender(&self) -> ChannelSender {
        self.sender.clone()
    }

    /// Sends a binary message (see [`ChannelSender::send`]).
    pub async fn send(&self, data: Bytes) -> Result<(), Error> {
        self.sender.send(data).await
    }

    /// Sends a text message.
    pub async fn send_text(&self, text: &str) -> Result<(), Error> {
        self.sender.send_text(text).await
    }

    /// Waits until the channel is open.
    pub async fn opened(&self) -> Result<(), Error> {
        self.sender.opened().await
    }

    /// The next message; `None` once the channel (or its link) is closed and every
    /// message before that has been read.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Closes the channel.
    pub async fn close(&self) {
        self.sender.close().await;
    }

    /// Whether the channel is closed (messages may still be waiting in `recv`).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// A byte stream over the channel: writes are cut into binary messages of at most
    /// 16 KiB, reads concatenate the messages received (text as its UTF-8 bytes).
    /// Shutting the writer down closes the channel.
    pub fn into_stream(self) -> ChannelStream {
        ChannelStream {
            sender: self.sender,
            rx: self.rx,
            pending: Bytes::new(),
            write: None,
            eof: false,
            shut: false,
        }
    }
}

type WriteFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// The largest message [`ChannelStream`] writes.
pub const STREAM_CHUNK: usize = 16 * 1024;

/// `AsyncRead + AsyncWrite` over a [`DataChannel`] (see
/// [`DataChannel::into_stream`]). A write is accepted once the previous one is
/// handed to the link; errors show on the next write or flush.
pub struct ChannelStream {
    sender: ChannelSender,
    rx: mpsc::UnboundedReceiver<Message>,
    pending: Bytes,
    write: Option<WriteFuture>,
    eof: bool,
    shut: bool,
}

impl std::fmt::Debug for ChannelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStream")
            .field("sender", &self.sender)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ChannelStream {
    fn poll_pending_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(fut) = self.write.as_mut() {
            let result = ready!(fut.as_mut().poll(cx));
            self.write = None;
            result?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Message::Binary(b)) => self.pending = b,
                Some(Message::Text(s)) => self.pending = Bytes::from(s.into_bytes()),
                None => self.eof = true,
            }
        }
        let n = buf.remaining().min(self.pending.len());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending_write(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(STREAM_CHUNK);
        let data = Bytes::copy_from_slice(&buf[..n]);
        let sender = self.sender.clone();
        let mut fut: WriteFuture = Box::pin(async move { sender.send(data).await });
        // Start it now: most writes finish at once.
        match fut.as_mut().poll(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => self.write = Some(fut),
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_pending_write(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending_write(cx))?;
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        self.shut = true;
        let sender = self.sender.clone();
        self.write = Some(Box::pin(async move {
            sender.close().await;
            Ok(())
        }));
        self.poll_pending_write(cx)
    }
}
