//! PROTOCOL.md §1 on three broker nodes sharing one real Redis: every test of `http.rs`
//! runs here again, each request going to one of the three nodes picked at random (see
//! `common::cluster_mode`).

#[path = "http.rs"]
mod http_flows;

mod ws {
    //! The WebSocket fast path (§1.8) across nodes.

    use std::time::Duration;

    use futures_util::{SinkExt as _, StreamExt as _};
    use glare_broker::Config;
    use serde_json::{Value, json};
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

    use crate::http_flows::common::{Broker, redis::RedisServer};

    type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

    async fn frame(ws: &mut Ws) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    async fn open(addr: std::net::SocketAddr, query: &str) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
            .await
            .unwrap();
        let first = frame(&mut ws).await;
        assert_eq!(first["event"], "channel", "{first}");
        (ws, first)
    }

    #[tokio::test]
    async fn websocket_sends_and_resumes_across_nodes() {
        let redis = RedisServer::start();
        let b = Broker::nodes(Config::default(), Some(&redis), 2).await;
        let (mut a, ach) = open(b.addrs[0], "").await;
        let (mut c, cch) = open(b.addrs[1], "").await;
        let (acid, akey, ccid) = (&ach["cid"], &ach["key"], &cch["cid"]);
        for r in 1..=3 {
            let send = json!({"op":"send","ref":r,"origin":ccid,"target":acid,"message":{"n":r}});
            c.send(Message::Text(send.to_string().into()))
                .await
                .unwrap();
            assert_eq!(frame(&mut c).await, json!({"event":"ack","ref":r}));
            let m = frame(&mut a).await;
            assert_eq!((m["id"].as_u64(), &m["message"]["n"]), (Some(r), &json!(r)));
        }
        let bad = json!({"op":"send","ref":"x","origin":ccid,"target":"nobody","message":1});
        c.send(Message::Text(bad.to_string().into())).await.unwrap();
        let e = frame(&mut c).await;
        assert_eq!((&e["error"], &e["ref"]), (&json!("not_found"), &json!("x")));
        // A resumes on the other node: the old socket is closed with 4000, the new one
        // replays what came after id 1.
        let (mut a2, _) = open(
            b.addrs[1],
            &format!(
                "?cid={}&key={}&lastEventId=1",
                acid.as_str().unwrap(),
                akey.as_str().unwrap()
            ),
        )
        .await;
        for id in 2..=3 {
            assert_eq!(frame(&mut a2).await["id"], json!(id));
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match a.next().await {
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await
        .expect("old socket closed");
        assert_eq!(closed, Some(4000));
    }
}
