//! The CLI contract (CLI.md): real `glare` processes, a real broker, real UDP.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const GLARE: &str = env!("CARGO_BIN_EXE_glare");

/// A child process killed (by its pid) when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line so far (also copied to the test's stderr).
    errors: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(GLARE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn glare");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        {
            let errors = Arc::clone(&errors);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    errors.lock().unwrap().push(line);
                }
            });
        }
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            errors,
        }
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .expect("a stdout line in time")
    }

    /// Waits for the exit (bounded) and returns the code and the remaining lines.
    fn finish(mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "glare did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            rest.push(l);
        }
        (code, rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glare-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_file(path: &Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn sha256_hex(data: &[u8]) -> String {
    glare::file::Sha256::hex_of(data)
}

fn broker() -> (Proc, String) {
    let b = Proc::spawn(&["broker", "--listen", "127.0.0.1:0"]);
    let first = b.line(Duration::from_secs(10));
    let url = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("first broker line: {first:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (b, url)
}

/// Splits `connected <REMOTE> role=<r> ms=<n>`.
fn connected(line: &str) -> (String, String) {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 4, "{line:?}");
    assert_eq!(parts[0], "connected", "{line:?}");
    let role = parts[2].strip_prefix("role=").expect("role=");
    assert!(role == "polite" || role == "impolite", "{line:?}");
    let ms: u64 = parts[3]
        .strip_prefix("ms=")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("ms=<n> in {line:?}"));
    assert!(ms < 30_000, "{line:?}");
    (parts[1].to_owned(), role.to_owned())
}

/// Checks `<verb> <NAME> <BYTES> <SHA256> mbps=<x>`.
fn transfer(line: &str, verb: &str, name: &str, len: usize, sha: &str) {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 5, "{line:?}");
    assert_eq!(parts[0], verb, "{line:?}");
    assert_eq!(parts[1], name, "{line:?}");
    assert_eq!(parts[2], len.to_string(), "{line:?}");
    assert_eq!(parts[3], sha, "{line:?}");
    let mbps: f64 = parts[4]
        .strip_prefix("mbps=")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("mbps=<x> in {line:?}"));
    assert!(mbps > 0.0, "{line:?}");
}

fn sid(line: &str) -> String {
    let sid = line
        .strip_prefix("sid ")
        .unwrap_or_else(|| panic!("first line {line:?}"));
    assert!(!sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()));
    sid.to_owned()
}

#[test]
fn peer_recv_and_peer_dial_send_follow_the_contract() {
    let (_broker, url) = broker();
    let dir = temp_dir("recv");
    let src = temp_dir("send").join("report.bin");
    let data = write_file(&src, 3 << 20);
    let sha = sha256_hex(&data);

    let receiver = Proc::spawn(&[
        "peer",
        "--broker",
        &url,
        "--recv",
        dir.to_str().unwrap(),
        "--bind",
        "127.0.0.1",
        "--count",
        "1",
        "--timeout",
        "40",
    ]);
    let rsid = sid(&receiver.line(Duration::from_secs(10)));
    let sender = Proc::spawn(&[
        "peer",
        "--broker",
        &url,
        "--dial",
        &rsid,
        "--send",
        src.to_str().unwrap(),
        "--bind",
        "127.0.0.1",
        "--count",
        "1",
        "--timeout",
        "40",
    ]);
    let ssid = sid(&sender.line(Duration::from_secs(10)));

    let (remote, srole) = connected(&sender.line(Duration::from_secs(30)));
    assert_eq!(
        remote, rsid,
        "the sender's link is to the receiver's session"
    );
    transfer(
        &sender.line(Duration::from_secs(40)),
        "sent",
        "report.bin",
        data.len(),
        &sha,
    );
    let (remote, rrole) = connected(&receiver.line(Duration::from_secs(30)));
    assert_eq!(remote, ssid, "the dial came from the sender's own session");
    assert_ne!(srole, rrole, "opposite roles");
    transfer(
        &receiver.line(Duration::from_secs(40)),
        "received",
        "report.bin",
        data.len(),
        &sha,
    );
    let (code, rest) = sender.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "sender exit; later lines {rest:?}");
    for l in &rest {
        assert!(l.starts_with(&format!("closed {rsid} ")), "{l:?}");
    }
    let (code, rest) = receiver.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "receiver exit; later lines {rest:?}");
    for l in &rest {
        assert!(l.starts_with(&format!("closed {ssid} ")), "{l:?}");
    }
    assert_eq!(std::fs::read(dir.join("report.bin")).unwrap(), data);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_peers_dialling_each_other_by_tag_end_with_one_link() {
    let (_broker, url) = broker();
    let mut procs = Vec::new();
    let mut files = Vec::new();
    for name in ["left", "right"] {
        let dir = temp_dir(name);
        let src = dir.join(format!("{name}.bin"));
        let data = write_file(&src, 256 * 1024 + name.len());
        let out = dir.join("in");
        std::fs::create_dir_all(&out).unwrap();
        let p = Proc::spawn(&[
            "peer",
            "--broker",
            &url,
            "--tag",
            "room",
            "--dial-tag",
            "room",
            "--send",
            src.to_str().unwrap(),
            "--recv",
            out.to_str().unwrap(),
            "--bind",
            "127.0.0.1",
            "--count",
            "2",
            "--timeout",
            "40",
        ]);
        files.push((name, data, out, dir));
        procs.push(p);
    }
    let sids: Vec<String> = procs
        .iter()
        .map(|p| sid(&p.line(Duration::from_secs(10))))
        .collect();
    let mut roles = Vec::new();
    for (i, p) in procs.into_iter().enumerate() {
        let other = 1 - i;
        let (code, lines) = p.finish(Duration::from_secs(45));
        assert_eq!(code, Some(0), "peer {i} exit; lines {lines:?}");
        let conns: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("connected "))
            .collect();
        assert_eq!(conns.len(), 1, "exactly one link: {lines:?}");
        let (remote, role) = connected(conns[0]);
        assert_eq!(remote, sids[other]);
        roles.push(role);
        let (name, data, _, _) = &files[i];
        let (oname, odata, _, _) = &files[other];
        let sent = lines
            .iter()
            .find(|l| l.starts_with("sent "))
            .expect("sent line");
        transfer(
            sent,
            "sent",
            &format!("{name}.bin"),
            data.len(),
            &sha256_hex(data),
        );
        let got = lines
            .iter()
            .find(|l| l.starts_with("received "))
            .expect("received line");
        transfer(
            got,
            "received",
            &format!("{oname}.bin"),
            odata.len(),
            &sha256_hex(odata),
        );
        assert_eq!(
            &std::fs::read(files[i].2.join(format!("{oname}.bin"))).unwrap(),
            odata
        );
    }
    assert_ne!(roles[0], roles[1], "opposite roles");
    for (_, _, _, dir) in files {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn fatal_errors_exit_non_zero_with_one_line() {
    // A broker that is not there.
    let out = Command::new(GLARE)
        .args(["peer", "--broker", "http://127.0.0.1:9", "--timeout", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("glare: ")), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

/// A redis-server on a free loopback port in a temp dir, killed by pid when dropped.
/// Missing binary → the test fails with how to install it (never skipped).
struct Redis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = temp_dir("redis");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): apt-get install -y redis-server")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server not listening in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 10: two `glare peer`s whose broker URLs point at different nodes of one
/// Redis-backed cluster find each other and transfer a file.
#[test]
fn peers_on_different_broker_nodes_transfer_a_file() {
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let node = || {
        let b = Proc::spawn(&["broker", "--listen", "127.0.0.1:0", "--redis", &url]);
        let first = b.line(Duration::from_secs(10));
        let addr = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("first broker line: {first:?}"))
            .to_owned();
        (b, addr)
    };
    let (_n1, url1) = node();
    let (_n2, url2) = node();
    assert_ne!(url1, url2);
    let dir = temp_dir("recv-redis");
    let src = temp_dir("send-redis").join("cluster.bin");
    let data = write_file(&src, 1 << 20);
    let sha = sha256_hex(&data);
    let common = ["--bind", "127.0.0.1", "--count", "1", "--timeout", "40"];
    let mut args = vec!["peer", "--broker", &url1, "--recv", dir.to_str().unwrap()];
    args.extend(common);
    let receiver = Proc::spawn(&args);
    let rsid = sid(&receiver.line(Duration::from_secs(10)));
    let mut args = vec!["peer", "--broker", &url2, "--dial", &rsid, "--send"];
    args.push(src.to_str().unwrap());
    args.extend(common);
    let sender = Proc::spawn(&args);
    let _ssid = sid(&sender.line(Duration::from_secs(10)));
    let (remote, _) = connected(&sender.line(Duration::from_secs(30)));
    assert_eq!(remote, rsid);
    transfer(
        &sender.line(Duration::from_secs(40)),
        "sent",
        "cluster.bin",
        data.len(),
        &sha,
    );
    let (code, rest) = sender.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "sender exit; later lines {rest:?}");
    let mut lines = vec![receiver.line(Duration::from_secs(30))];
    let (code, rest) = receiver.finish(Duration::from_secs(10));
    lines.extend(rest);
    assert_eq!(code, Some(0), "receiver exit; lines {lines:?}");
    let connects: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("connected "))
        .collect();
    assert_eq!(connects.len(), 1, "one link on the receiver: {lines:?}");
    let received: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("received "))
        .collect();
    assert_eq!(received.len(), 1, "one file received: {lines:?}");
    transfer(received[0], "received", "cluster.bin", data.len(), &sha);
    assert_eq!(std::fs::read(dir.join("cluster.bin")).unwrap(), data);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks a `glare: candidate pair <l>/<r> <LOCAL> -> <REMOTE>` stderr line on
/// loopback (the remote may be peer-reflexive when its check beat its candidate).
fn candidate_pair(lines: &[String]) {
    let line = lines
        .iter()
        .find(|l| l.contains("candidate pair "))
        .unwrap_or_else(|| panic!("a candidate pair line on stderr: {lines:?}"));
    let rest = &line[line.find("candidate pair ").unwrap() + "candidate pair ".len()..];
    let parts: Vec<&str> = rest.split(' ').collect();
    assert_eq!(parts.len(), 4, "{line:?}");
    let (local, remote) = parts[0].split_once('/').expect("<local>/<remote>");
    assert_eq!(local, "host", "{line:?}");
    assert!(remote == "host" || remote == "prflx", "{line:?}");
    for addr in [parts[1], parts[3]] {
        let a: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{line:?}"));
        assert!(a.ip().is_loopback(), "{line:?}");
    }
    assert_eq!(parts[2], "->", "{line:?}");
}

/// `--echo --count 1`: after its file is verified the echo side stays up while the
/// peer still uses the channel it opened, and exits once the peer closes it;
/// `--recv DIR` creates DIR; the candidate pair is printed on stderr.
#[test]
fn echo_side_at_count_waits_for_the_peer_to_close_its_channels() {
    let (_broker, url) = broker();
    let base = temp_dir("echo");
    let dir = base.join("not").join("there");
    let proc = Proc::spawn(&[
        "peer",
        "--broker",
        &url,
        "--recv",
        dir.to_str().unwrap(),
        "--echo",
        "--bind",
        "127.0.0.1",
        "--count",
        "1",
        "--timeout",
        "40",
    ]);
    let psid = sid(&proc.line(Duration::from_secs(10)));
    assert!(dir.is_dir(), "--recv created its directory");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = bytes::Bytes::from(vec![7u8; 200_000]);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(45), async {
            let me = glare::Peer::new(&url, glare::Config::loopback())
                .await
                .unwrap();
            me.host(Vec::<String>::new(), serde_json::Value::Null, false)
                .await
                .unwrap();
            let conn = me.connect(&psid).await.unwrap();
            conn.connected().await.unwrap();
            // A channel echoed and closed before the file.
            let mut early = conn
                .open_channel("early", glare::ChannelOptions::default())
                .await
                .unwrap();
            early.send_text("one").await.unwrap();
            assert_eq!(early.recv().await, Some(glare::Message::Text("one".into())));
            early.close().await;
            // One open across the file's acknowledgement.
            let mut across = conn
                .open_channel("across", glare::ChannelOptions::default())
                .await
                .unwrap();
            across.send_text("two").await.unwrap();
            assert_eq!(
                across.recv().await,
                Some(glare::Message::Text("two".into()))
            );
            let report = glare::file::send_bytes(&conn, "blob.bin", data.clone(), |_| {})
                .await
                .expect("the file is acknowledged");
            assert_eq!(report.size, data.len() as u64);
            // The echo side is at --count now: it still echoes on the open channel.
            across
                .send(bytes::Bytes::from_static(b"three"))
                .await
                .unwrap();
            assert_eq!(
                across.recv().await,
                Some(glare::Message::Binary(bytes::Bytes::from_static(b"three")))
            );
            across.close().await;
            // A channel opened right after the last one closed is served too.
            let mut late = conn
                .open_channel("late", glare::ChannelOptions::default())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            late.send_text("four").await.unwrap();
            assert_eq!(late.recv().await, Some(glare::Message::Text("four".into())));
            late.close().await;
            // Keep the link until the process has gone.
            let _ = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
            me.close().await;
        })
        .await
        .expect("the in-process peer finished in time");
    });
    let errors = Arc::clone(&proc.errors);
    let (code, rest) = proc.finish(Duration::from_secs(15));
    assert_eq!(code, Some(0), "exit; later lines {rest:?}");
    assert_eq!(std::fs::read(dir.join("blob.bin")).unwrap(), data);
    candidate_pair(&errors.lock().unwrap());
    let _ = std::fs::remove_dir_all(&base);
}
