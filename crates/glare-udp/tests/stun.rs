//! STUN bindings against tiny servers written here (stun-rs on loopback sockets).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::TestConn;
use glare_udp::{Config, StunConfig, StunError, StunServer};
use stun_rs::attributes::stun::{ErrorCode, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Clone, Copy)]
enum Answer {
    XorMapped,
    Garbage,
    NoAddress,
    Error400,
}

/// A STUN server answering at most 32 requests, then stopping.
async fn server(answer: Answer) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0; 1500];
        for _ in 0..32 {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let decoder = MessageDecoderBuilder::default().build();
            let Ok((request, _)) = decoder.decode(&buf[..n]) else {
                continue;
            };
            let id = *request.transaction_id();
            let reply = match answer {
                Answer::Garbage => vec![0xde, 0xad, 0xbe, 0xef, 0x01],
                Answer::XorMapped | Answer::NoAddress | Answer::Error400 => {
                    let builder = match answer {
                        Answer::Error400 => {
                            StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
                                .with_transaction_id(id)
                                .with_attribute(ErrorCode::from(
                                    stun_rs::ErrorCode::new(400, "Bad Request").unwrap(),
                                ))
                        }
                        Answer::XorMapped => {
                            StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                                .with_transaction_id(id)
                                .with_attribute(XorMappedAddress::from(from))
                        }
                        _ => StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                            .with_transaction_id(id),
                    };
                    let mut out = [0; 256];
                    let n = MessageEncoderBuilder::default()
                        .build()
                        .encode(&mut out, &builder.build())
                        .unwrap();
                    out[..n].to_vec()
                }
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

fn quick() -> Config {
    let mut c = Config::default();
    c.stun = StunConfig::default();
    c.stun.rto = Duration::from_millis(20);
    c.stun.max_transmissions = 3;
    c.stun.final_wait_factor = 4;
    c
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[tokio::test]
async fn binding_gives_the_server_reflexive_address() {
    let (addr, task) = server(Answer::XorMapped).await;
    let driver = glare_udp::spawn::<TestConn>(loopback(), quick()).unwrap();
    // A connection that accepts everything must still never see the STUN answers.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut greedy = TestConn::new(0, tx);
    greedy.echo = false;
    let _greedy = driver.add(greedy).await.unwrap();
    let servers = [
        StunServer::parse(&format!("stun:127.0.0.1:{}", addr.port())).unwrap(),
        StunServer::parse(&format!("stun:localhost:{}", addr.port())).unwrap(),
        StunServer::parse("stun:[::1]:3478").unwrap(),
    ];
    let results = driver.server_reflexive(&servers).await;
    assert_eq!(results.len(), 3);
    for r in &results[..2] {
        let c = r.as_ref().unwrap();
        assert_eq!(c.address, driver.local_addr());
        assert_eq!(c.base, driver.local_addr());
        assert_eq!(c.server, addr);
    }
    assert!(
        matches!(results[2], Err(StunError::NoAddress { .. })),
        "{:?}",
        results[2]
    );
    let stats = driver.stats().await.unwrap();
    assert_eq!(stats.stun_responses, 2);
    assert_eq!(stats.dropped_unknown, 0);
    assert!(rx.try_recv().is_err(), "a STUN answer reached a connection");
    task.abort();
}

#[tokio::test]
async fn silent_server_times_out() {
    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let server = StunServer::from_addr(silent.local_addr().unwrap());
    let driver = glare_udp::spawn::<TestConn>(loopback(), quick()).unwrap();
    let started = std::time::Instant::now();
    let results = driver.server_reflexive(&[server]).await;
    assert!(
        matches!(results[0], Err(StunError::Timeout { .. })),
        "{:?}",
        results[0]
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Three requests reached the silent server.
    let mut buf = [0; 64];
    for _ in 0..3 {
        let (n, _) = silent.try_recv_from(&mut buf).unwrap();
        assert_eq!(n, 20);
    }
}

/// RFC 5389 timing (39.5 s) in virtual time: the reactor's one clock is tokio's.
#[tokio::test(start_paused = true)]
async fn silent_server_times_out_on_rfc_schedule() {
    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let server = StunServer::from_addr(silent.local_addr().unwrap());
    let driver = glare_udp::spawn::<TestConn>(loopback(), Config::default()).unwrap();
    let started = tokio::time::Instant::now();
    let results = driver.server_reflexive(&[server]).await;
    assert!(
        matches!(results[0], Err(StunError::Timeout { .. })),
        "{:?}",
        results[0]
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(39_500) && waited < Duration::from_millis(39_600),
        "{waited:?}"
    );
}

#[tokio::test]
async fn garbage_answers_are_dropped_then_time_out() {
    let (addr, task) = server(Answer::Garbage).await;
    let driver = glare_udp::spawn::<TestConn>(loopback(), quick()).unwrap();
    let results = driver
        .server_reflexive(&[StunServer::from_addr(addr)])
        .await;
    assert!(
        matches!(results[0], Err(StunError::Timeout { .. })),
        "{:?}",
        results[0]
    );
    let stats = driver.stats().await.unwrap();
    assert_eq!(stats.dropped_unknown, 3, "{stats:?}");
    task.abort();
}

#[tokio::test]
async fn malformed_and_error_answers() {
    let (addr, task) = server(Answer::NoAddress).await;
    let (addr_400, task_400) = server(Answer::Error400).await;
    let driver = glare_udp::spawn::<TestConn>(loopback(), quick()).unwrap();
    let results = driver
        .server_reflexive(&[StunServer::from_addr(addr), StunServer::from_addr(addr_400)])
        .await;
    assert!(
        matches!(results[0], Err(StunError::MalformedResponse { server }) if server == addr),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(StunError::ErrorResponse { code: 400, server, .. }) if *server == addr_400),
        "{:?}",
        results[1]
    );
    task.abort();
    task_400.abort();
}
