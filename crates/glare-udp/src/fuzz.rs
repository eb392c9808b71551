//! Fuzz target bodies (feature `_fuzz`, test-only). `fuzz/` calls these, and the tests
//! below run them over the committed seed corpora so they keep compiling and passing.
//!
//! Both bodies check invariants beyond "does not panic".

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
use stun_rs::methods::{ALLOCATE, BINDING};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
    StunMessageBuilder, TransactionId,
};

use crate::stun::{self, StunClient, StunShape};
use crate::turn::client::{Inbound, SendOutcome, TurnClient, TurnEvent};
use crate::turn::framing::{self, StreamFramer};
use crate::{StunConfig, TurnConfig};

const SERVER: &str = "192.0.2.1:3478";
const RELAYED: &str = "192.0.2.1:50000";
const PEER: &str = "198.51.100.7:9000";

/// Splits fuzz input into messages: each is a 2-byte big-endian length then bytes
/// (a short tail is the last message).
fn messages(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let len = match data {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => 0,
        };
        let rest = data.get(2..).unwrap_or_default();
        let (message, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some(message)
    })
}

fn encode(message: &stun_rs::StunMessage) -> Vec<u8> {
    let mut buf = vec![0; 1024];
    // Messages built here are small and valid: encoding cannot fail.
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, message)
        .expect("a fixed test message encodes");
    buf.truncate(n);
    buf
}

/// An allocated client (see `allocate`), made once per thread and forked per run.
fn allocated_client(reliable: bool) -> (Instant, TurnClient) {
    thread_local! {
        static TEMPLATES: (Instant, TurnClient, TurnClient) = {
            let now = Instant::now();
            (now, allocate(now, false), allocate(now, true))
        };
    }
    TEMPLATES.with(|(now, udp, tcp)| (*now, if reliable { tcp.fork() } else { udp.fork() }))
}

/// Plays the server for the client's Allocate: 401 with realm and nonce, then a
/// success with integrity. Returns the client, allocated.
fn allocate(now: Instant, reliable: bool) -> TurnClient {
    let server: SocketAddr = SERVER.parse().expect("fixed address");
    let mut client = TurnClient::new(
        now,
        server,
        reliable,
        "user",
        "pass",
        TurnConfig::default(),
        7,
    );
    let mut out = Vec::new();
    assert!(client.poll_transmit(now, &mut out), "the Allocate goes out");
    let (request, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&out)
        .expect("the client's request decodes");
    let unauthorized = StunMessageBuilder::new(ALLOCATE, MessageClass::ErrorResponse)
        .with_transaction_id(*request.transaction_id())
        .with_attribute(ErrorCode::from(
            stun_rs::ErrorCode::new(401, "Unauthorized").expect("valid code"),
        ))
        .with_attribute(Realm::new("realm").expect("valid realm"))
        .with_attribute(Nonce::new("nonce1234").expect("valid nonce"))
        .build();
    let _ = client.handle_message(now, &encode(&unauthorized));
    out.clear();
    assert!(
        client.poll_transmit(now, &mut out),
        "the authenticated Allocate goes out"
    );
    let (request, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&out)
        .expect("the client's request decodes");
    assert!(request.get::<UserName>().is_some() && request.get::<MessageIntegrity>().is_some());
    let key = HMACKey::new_long_term("user", "realm", "pass", Algorithm::from(AlgorithmId::MD5))
        .expect("valid credentials");
    let success = StunMessageBuilder::new(ALLOCATE, MessageClass::SuccessResponse)
        .with_transaction_id(*request.transaction_id())
        .with_attribute(XorRelayedAddress::from(
            RELAYED.parse::<SocketAddr>().expect("fixed address"),
        ))
        .with_attribute(XorMappedAddress::from(
            "203.0.113.9:4000"
                .parse::<SocketAddr>()
                .expect("fixed address"),
        ))
        .with_attribute(LifeTime::new(600))
        .with_attribute(MessageIntegrity::new(key))
        .build();
    let _ = client.handle_message(now, &encode(&success));
    match client.poll_event() {
        Some(TurnEvent::Allocated { relayed, .. }) => {
            assert_eq!(
                relayed,
                RELAYED.parse::<SocketAddr>().expect("fixed address")
            );
        }
        other => panic!("allocation failed: {other:?}"),
    }
    client
}

/// TURN client: any sequence of messages from the server, over UDP (one message per
/// datagram) or TCP (through the stream framer, in chunks), with time moving and data
/// sent to peers in between, never panics; peer data returned always lies inside the
/// message; sent datagrams are wrapped so that the server side decodes them back.
pub fn turn_client(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let reliable = mode & 1 != 0;
    let (mut now, mut client) = if mode & 2 != 0 {
        allocated_client(reliable)
    } else {
        let server: SocketAddr = SERVER.parse().expect("fixed address");
        let now = Instant::now();
        let config = TurnConfig::default();
        let client = TurnClient::new(now, server, reliable, "user", "pass", config, 7);
        (now, client)
    };
    let peer: SocketAddr = PEER.parse().expect("fixed address");
    let mut framer = StreamFramer::new();
    let chunk = usize::from(mode >> 4) + 1;
    let mut out = Vec::new();
    for (i, message) in messages(input).enumerate() {
        // Time moves (sometimes far: refreshes, expiry), the client sends a little.
        if let Some(&b) = message.first() {
            now += Duration::from_millis(u64::from(b) * 1000 * u64::from(mode >> 6));
            client.handle_timeout(now);
        }
        if i % 3 == 0 {
            out.clear();
            let payload = message.get(..message.len().min(64)).unwrap_or_default();
            if client.send(now, peer, payload, &mut out) == SendOutcome::Wrapped {
                check_wrapped(&out, payload);
            }
        }
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        if reliable {
            for piece in message.chunks(chunk) {
                framer.feed(piece);
                loop {
                    match framer.next_message() {
                        Ok(Some(m)) => inputs.push(m.to_vec()),
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        } else {
            inputs.push(message.to_vec());
        }
        for m in &inputs {
            if let Inbound::Data { payload, .. } = client.handle_message(now, m) {
                let range = m.as_ptr_range();
                let inner = payload.as_ptr_range();
                assert!(range.start <= inner.start && inner.end <= range.end);
            }
        }
        while client.poll_event().is_some() {}
        out.clear();
        for _ in 0..64 {
            if !client.poll_transmit(now, &mut out) {
                break;
            }
        }
    }
}

/// A wrapped datagram is a `ChannelData` message or a Send indication carrying exactly
/// `payload`.
fn check_wrapped(wrapped: &[u8], payload: &[u8]) {
    let first = wrapped.first().copied().unwrap_or_default();
    if framing::is_channel_data(first) {
        let (_, inner) = framing::decode_channel_data(wrapped).expect("ChannelData decodes");
        assert_eq!(inner, payload);
    } else {
        let (message, _) = MessageDecoderBuilder::default()
            .build()
            .decode(wrapped)
            .expect("a Send indication decodes");
        let data = message
            .get::<stun_rs::attributes::turn::Data>()
            .and_then(|a| a.as_data().ok())
            .expect("DATA present");
        assert_eq!(data.as_bytes(), payload);
    }
}

/// The datagram demux's decisions, in the reactor's order, for any datagrams: the STUN
/// shape check (a well-formed STUN message is classified as such, with its
/// transaction id), the binding client's answers, then the TURN client of a UDP
/// allocation. Never panics; the binding client ends with at most one result.
pub fn stun_demux(data: &[u8]) {
    let (now, mut turn) = allocated_client(false);
    let server: SocketAddr = SERVER.parse().expect("fixed address");
    let local: SocketAddr = "10.0.0.1:5000".parse().expect("fixed address");
    let mut binding = StunClient::new(StunConfig::default());
    let id = [3; 12];
    binding.start(now, server, id);
    let mut request = Vec::new();
    assert_eq!(binding.poll_transmit(now, &mut request), Some(server));
    for datagram in messages(data) {
        let shape = stun::shape(datagram);
        if let Ok((message, n)) = MessageDecoderBuilder::default().build().decode(datagram)
            && n == datagram.len()
        {
            // Whatever stun-rs accepts as a whole message, the demux sees as STUN.
            assert!(
                matches!(shape, StunShape::Stun { transaction, .. } if transaction == *message.transaction_id().as_bytes()),
                "stun-rs decoded what the demux calls {shape:?}"
            );
        }
        match shape {
            StunShape::Malformed => continue,
            StunShape::Stun {
                response: true,
                transaction,
            } if binding.has_pending() && binding.owns(&transaction) => {
                binding.handle_response(&transaction, server, local, datagram);
                continue;
            }
            _ => {}
        }
        let _ = turn.handle_message(now, datagram);
    }
    let mut results = 0;
    while binding.poll_result().is_some() {
        results += 1;
    }
    assert!(results <= 1);
    // A binding request the demux built is STUN to itself, and a Binding.
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&request)
        .expect("own request decodes");
    assert_eq!(message.method(), BINDING);
    let _ = TransactionId::from(id);
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpora_pass() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");
        type Body = fn(&[u8]);
        let targets: [(&str, Body); 2] = [
            ("turn_client", super::turn_client),
            ("stun_demux", super::stun_demux),
        ];
        for (name, body) in targets {
            let dir = std::path::Path::new(root).join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                body(&std::fs::read(&path).unwrap());
                count += 1;
            }
            assert!(count > 0, "{name}: empty seed corpus");
        }
    }

    #[test]
    fn bodies_survive_hostile_bytes() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Bias towards STUN/TURN framing bytes.
                    [
                        0x00, 0x01, 0x17, 0x21, 0x12, 0xA4, 0x42, 0x40, 0x00, 0x13, 0x12, 0xff,
                    ][(state % 12) as usize]
                })
                .collect();
            super::turn_client(&bytes);
            super::stun_demux(&bytes);
        }
    }
}
