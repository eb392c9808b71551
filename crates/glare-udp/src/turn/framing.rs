//! TURN's byte-level framing: `ChannelData` messages (RFC 8656 section 12.4) and the
//! stream of STUN and `ChannelData` messages over TCP and TLS (section 12.5,
//! RFC 4571-style: each message carries its own length).

use crate::stun::HEADER_LEN;

/// The `ChannelData` header: channel number and length.
pub(crate) const CHANNEL_HEADER_LEN: usize = 4;
/// The lowest channel number (RFC 8656: 0x4000..=0x4FFF).
pub(crate) const MIN_CHANNEL: u16 = 0x4000;
/// The highest channel number.
pub(crate) const MAX_CHANNEL: u16 = 0x4FFF;

/// Whether `first` (a message's first byte) starts a `ChannelData` message.
pub(crate) fn is_channel_data(first: u8) -> bool {
    first & 0xC0 == 0x40
}

/// Appends a `ChannelData` message carrying `payload` on `channel` to `out`; pads it to
/// a multiple of four bytes when `pad` (TCP and TLS).
pub(crate) fn encode_channel_data(channel: u16, payload: &[u8], pad: bool, out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    if pad {
        let padding = (4 - payload.len() % 4) % 4;
        out.extend_from_slice(&[0; 3][..padding]);
    }
}

/// Decodes a `ChannelData` message: its channel and its payload. Trailing bytes past the
/// length (padding) are ignored; a message shorter than its length, or with a channel
/// number outside the range, is `None`.
pub(crate) fn decode_channel_data(message: &[u8]) -> Option<(u16, &[u8])> {
    let header = message.get(..CHANNEL_HEADER_LEN)?;
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let payload = message.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len)?;
    Some((channel, payload))
}

/// The stream lost its framing: a message that is neither STUN nor `ChannelData`. The
/// connection cannot recover and must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FramingError;

/// Splits a TCP/TLS byte stream from a TURN server into messages.
#[derive(Debug, Default)]
pub(crate) struct StreamFramer {
    buf: Vec<u8>,
    /// Where the next message starts in `buf`.
    start: usize,
    broken: bool,
}

impl StreamFramer {
    /// The largest message: a STUN header and 64 KiB of attributes, or `ChannelData`.
    const MAX_MESSAGE: usize = HEADER_LEN + u16::MAX as usize + 3;

    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message (STUN, or `ChannelData` with its padding), `Ok(None)`
    /// when more bytes are needed, or the framing error that ends the stream.
    pub(crate) fn next_message(&mut self) -> Result<Option<&[u8]>, FramingError> {
        if self.broken {
            return Err(FramingError);
        }
        let rest = &self.buf[self.start..];
        let Some(&first) = rest.first() else {
            return Ok(None);
        };
        let total = if first & 0xC0 == 0 {
            let Some(len) = rest.get(2..4) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len % 4 != 0 {
                self.broken = true;
                return Err(FramingError);
            }
            HEADER_LEN + len
        } else if is_channel_data(first) {
            let Some(len) = rest.get(2..4) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            CHANNEL_HEADER_LEN + len.div_ceil(4) * 4
        } else {
            self.broken = true;
            return Err(FramingError);
        };
        debug_assert!(total <= Self::MAX_MESSAGE);
        if rest.len() < total {
            return Ok(None);
        }
        let start = self.start;
        self.start += total;
        Ok(Some(&self.buf[start..start + total]))
    }

    /// Bytes buffered and not yet returned.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trip_and_padding() {
        for (len, pad, total) in [(0, true, 4), (1, true, 8), (4, true, 8), (5, false, 9)] {
            let payload = vec![7; len];
            let mut out = Vec::new();
            encode_channel_data(0x4001, &payload, pad, &mut out);
            assert_eq!(out.len(), total);
            assert_eq!(decode_channel_data(&out), Some((0x4001, &payload[..])));
        }
        assert_eq!(decode_channel_data(&[0x40, 0x00, 0x00, 0x05, 1]), None);
        assert_eq!(decode_channel_data(&[0x50, 0x00, 0x00, 0x00]), None);
        assert_eq!(decode_channel_data(&[0x40]), None);
    }

    #[test]
    fn stream_splits_in_any_chunking() {
        let mut stream = Vec::new();
        encode_channel_data(0x4000, b"hello", true, &mut stream);
        // A header-only STUN message (binding request).
        stream.extend_from_slice(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]);
        stream.extend_from_slice(&[9; 12]);
        encode_channel_data(0x4FFF, b"", true, &mut stream);
        for chunk in 1..stream.len() {
            let mut framer = StreamFramer::new();
            let mut messages = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.feed(piece);
                while let Some(m) = framer.next_message().unwrap() {
                    messages.push(m.to_vec());
                }
            }
            assert_eq!(messages.len(), 3, "chunk {chunk}");
            assert_eq!(messages[0].len(), 12);
            assert_eq!(messages[1].len(), 20);
            assert_eq!(messages[2].len(), 4);
            assert_eq!(framer.pending(), 0);
        }
    }

    #[test]
    fn garbage_breaks_the_stream() {
        let mut framer = StreamFramer::new();
        framer.feed(&[0xff, 1, 2, 3]);
        assert_eq!(framer.next_message(), Err(FramingError));
        assert_eq!(framer.next_message(), Err(FramingError));
        let mut framer = StreamFramer::new();
        framer.feed(&[0, 1, 0, 3]);
        assert_eq!(framer.next_message(), Err(FramingError));
    }
}
