//! Several broker nodes as one: the registry in Redis (`Config::redis`).
//!
//! Every node holds the streams of the channels attached to it (their *home*); what every
//! node must agree on lives in Redis, changed only by Lua scripts (each one atomic):
//!
//! ```text
//! P:ch:{cid}     hash  kh (SHA-1 of the key), home (node id), last (last id sent), gen
//!                      (attach generation), tokens + refilled (the send rate bucket)
//! P:buf:{cid}    list  the last `buffer` message events, oldest first; the first one's
//!                      id is last − LLEN + 1; expires `buffer_ttl` after the last push
//! P:chs:{cid}    set   the channel's sids
//! P:sess         hash  sid → "host\nlist\ntags,csv\ntags-json\nmetadata"
//! P:detached     zset  cid → when its grace period ends (ms, Redis clock)
//! P:nodes        zset  node → last heartbeat (ms);  P:homed:{node}  set  its cids
//! P:inbox:{node} pub/sub  "m cid id data" | "r cid gen" (replaced) | "c cid" (closed)
//! P:watch        pub/sub  "sid\0old-record\0new-record" (empty: none)
//! ```
//!
//! A send is one script run on any node: check the origin and its key, find the target's
//! channel, take a rate token, number the message, buffer it and publish it to the home
//! node's inbox. The home node hands it to the stream if the id is the next one; an id
//! that skips (a pub/sub message lost while Redis was away) ends the stream so the client
//! resumes from the buffer. A resume is one script that moves the home, bumps `gen` (the
//! old home ends its stream) and returns the buffered events to replay. Nodes beat every
//! `heartbeat`; a node silent for `node_timeout` is dead: its channels get the grace
//! period from its last beat and are closed then unless resumed elsewhere, their sessions
//! removed and every node's watchers told. Any Redis failure answers 503.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use glare_proto::{
    broker::{ChannelAuth, CreateSession, ErrorCode, Json, Limits, UpdateSession},
    filter::{Filter, Tag},
};
use redis::{
    AsyncCommands as _, Client, IntoConnectionInfo as _, ProtocolVersion, PushInfo, PushKind,
    Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;

use crate::registry::{
    ApiError, Attachment, Delivery, DetachGuard, EndFlag, EndReason, Origin, Resume, Stats, Watch,
    WatchEvent, entry_json, new_id, not_found_channel, remove_json, wrong_key,
};

/// Where the shared registry lives and how nodes watch each other.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and pub/sub channel (several brokers can share one Redis).
    pub prefix: String,
    /// How often a node beats and sweeps expired channels: 1 s.
    pub heartbeat: Duration,
    /// A node silent this long is dead (its channels start their grace period): 5 s.
    pub node_timeout: Duration,
    /// Longest wait for one Redis answer before the request is 503: 2 s.
    pub request_timeout: Duration,
    /// How long a channel's buffer outlives its last message: 10 min.
    pub buffer_ttl: Duration,
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "glare".to_owned(),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            buffer_ttl: Duration::from_secs(600),
        }
    }
}

const HEAD: &str = include_str!("backplane/scripts.lua");

const OPEN: &str = r"
local cid, node = ARGV[2], ARGV[4]
redis.call('HSET', ck(cid), 'kh', kh(ARGV[3]), 'home', node, 'last', 0, 'gen', 1,
  'tokens', ARGV[5], 'refilled', now_ms())
redis.call('SADD', homed(node), cid)
return {'OK'}
";

const ATTACH: &str = r"
local cid, node = ARGV[2], ARGV[5]
local e = auth(cid, ARGV[3]); if e then return e end
local last = tonumber(redis.call('HGET', ck(cid), 'last'))
local seen = tonumber(ARGV[4])
if seen > last then return {'E', '400', tostring(last)} end
local gen = redis.call('HINCRBY', ck(cid), 'gen', 1)
local home = redis.call('HGET', ck(cid), 'home')
if home ~= node then
  if home and home ~= '' then
    redis.call('SREM', homed(home), cid)
    redis.call('PUBLISH', inbox(home), 'r ' .. cid .. ' ' .. gen)
  end
  redis.call('HSET', ck(cid), 'home', node)
  redis.call('SADD', homed(node), cid)
end
redis.call('ZREM', DETACHED, cid)
local n = redis.call('LLEN', bk(cid))
local first = last - n + 1
local from = math.max(seen + 1, first)
local out = {'OK', tostring(last), tostring(gen), tostring(from)}
if from <= last then
  local items = redis.call('LRANGE', bk(cid), from - first, -1)
  for i = 1, #items do out[#out + 1] = items[i] end
end
return out
";

const DETACH: &str = r"
local cid = ARGV[2]
local h = redis.call('HMGET', ck(cid), 'home', 'gen')
if h[1] == ARGV[3] and h[2] == ARGV[4] then
  redis.call('ZADD', DETACHED, now_ms() + tonumber(ARGV[5]), cid)
  return {'OK', '1'}
end
return {'OK', '0'}
";

const CLOSE: &str = r"
local e = auth(ARGV[2], ARGV[3]); if e then return e end
close_channel(ARGV[2])
return {'OK'}
";

const SESSION_CREATE: &str = r"
local cid, sid = ARGV[2], ARGV[4]
local e = auth(cid, ARGV[3]); if e then return e end
if redis.call('SCARD', sk(cid)) >= tonumber(ARGV[6]) then return {'E', '409'} end
redis.call('HSET', SESS, sid, ARGV[5])
redis.call('SADD', sk(cid), sid)
redis.call('PUBLISH', WATCH, sid .. '\0\0' .. ARGV[5])
return {'OK'}
";

const SESSION_UPDATE: &str = r"
local cid, sid = ARGV[2], ARGV[4]
local e = auth(cid, ARGV[3]); if e then return e end
local old = redis.call('HGET', SESS, sid)
if not old then return {'E', '404s'} end
local host, list, csv, tj, meta = string.match(old, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
if host ~= cid then return {'E', '403h'} end
if ARGV[5] == '1' then csv = ARGV[6]; tj = ARGV[7] end
if ARGV[8] == '1' then meta = ARGV[9] end
if ARGV[10] == '1' then list = ARGV[11] end
local new = host .. '\n' .. list .. '\n' .. csv .. '\n' .. tj .. '\n' .. meta
redis.call('HSET', SESS, sid, new)
redis.call('PUBLISH', WATCH, sid .. '\0' .. old .. '\0' .. new)
return {'OK'}
";

const SESSION_CLOSE: &str = r"
local cid, sid = ARGV[2], ARGV[4]
local e = auth(cid, ARGV[3]); if e then return e end
local old = redis.call('HGET', SESS, sid)
if not old then return {'E', '404s'} end
if string.match(old, '^([^\n]*)') ~= cid then return {'E', '403h'} end
redis.call('HDEL', SESS, sid)
redis.call('SREM', sk(cid), sid)
redis.call('PUBLISH', WATCH, sid .. '\0' .. old .. '\0')
return {'OK'}
";

const SEND: &str = r#"
local origin, mode, proof, target = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ocid = host_of(origin)
if not ocid then return {'E', '403o'} end
if mode == 'k' then
  if redis.call('HGET', ck(ocid), 'kh') ~= kh(proof) then return {'E', '403o'} end
elseif ocid ~= proof then return {'E', '403o'} end
local tcid = host_of(target)
if not tcid then return {'E', '404t'} end
local rate, burst = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local b = redis.call('HMGET', ck(ocid), 'tokens', 'refilled')
local tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate / 1000)
if tokens < 1 then
  redis.call('HSET', ck(ocid), 'tokens', tostring(tokens), 'refilled', now)
  return {'E', '429', tostring(math.ceil((1 - tokens) * 1000 / rate))}
end
redis.call('HSET', ck(ocid), 'tokens', tostring(tokens - 1), 'refilled', now)
local id = redis.call('HINCRBY', ck(tcid), 'last', 1)
local data = '{"origin":"' .. origin .. '","target":"' .. target .. '","message":' .. ARGV[6] .. '}'
local buffer = tonumber(ARGV[9])
if buffer > 0 then
  redis.call('RPUSH', bk(tcid), data)
  redis.call('LTRIM', bk(tcid), -buffer, -1)
  redis.call('PEXPIRE', bk(tcid), ARGV[10])
end
local home = redis.call('HGET', ck(tcid), 'home')
if home and home ~= '' then
  redis.call('PUBLISH', inbox(home), 'm ' .. tcid .. ' ' .. id .. ' ' .. data)
end
return {'OK', tostring(id)}
"#;

const HEARTBEAT: &str = r"
local node = ARGV[2]
local now = now_ms()
local fresh = redis.call('ZADD', NODES, now, node)
local dead = redis.call('ZRANGEBYSCORE', NODES, '-inf', now - tonumber(ARGV[3]))
for _, n in ipairs(dead) do
  local last = tonumber(redis.call('ZSCORE', NODES, n))
  for _, cid in ipairs(redis.call('SMEMBERS', homed(n))) do
    redis.call('ZADD', DETACHED, 'NX', last + tonumber(ARGV[4]), cid)
  end
  redis.call('DEL', homed(n))
  redis.call('ZREM', NODES, n)
end
local exp = redis.call('ZRANGEBYSCORE', DETACHED, '-inf', now, 'LIMIT', 0, 512)
for _, cid in ipairs(exp) do close_channel(cid) end
return {'OK', tostring(fresh), tostring(#exp), tostring(redis.call('SCARD', homed(node))),
  tostring(redis.call('HLEN', SESS))}
";

const REASSERT: &str = r"
local node = ARGV[2]
for i = 3, #ARGV do
  local cid = ARGV[i]
  if redis.call('HGET', ck(cid), 'home') == node then
    redis.call('SADD', homed(node), cid)
    redis.call('ZREM', DETACHED, cid)
  end
end
return {'OK'}
";

struct Scripts {
    open: Script,
    attach: Script,
    detach: Script,
    close: Script,
    session_create: Script,
    session_update: Script,
    session_close: Script,
    send: Script,
    heartbeat: Script,
    reassert: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{HEAD}{body}"));
        Self {
            open: s(OPEN),
            attach: s(ATTACH),
            detach: s(DETACH),
            close: s(CLOSE),
            session_create: s(SESSION_CREATE),
            session_update: s(SESSION_UPDATE),
            session_close: s(SESSION_CLOSE),
            send: s(SEND),
            heartbeat: s(HEARTBEAT),
            reassert: s(REASSERT),
        }
    }
}

/// The stream of a channel homed here.
struct Holder {
    tx: mpsc::Sender<Delivery>,
    end: Arc<EndFlag>,
    /// Which local attach this is (the guard's check).
    local_gen: u64,
    /// The channel's `gen` in Redis when it attached here.
    redis_gen: u64,
    /// The id the stream expects next.
    next: u64,
}

/// An attach whose script has not answered yet: the messages that arrive meanwhile.
struct Pending {
    token: u64,
    msgs: Vec<(u64, Arc<str>)>,
    closed: bool,
}

#[derive(Default)]
struct LocalChan {
    holder: Option<Holder>,
    pending: Vec<Pending>,
}

impl LocalChan {
    fn is_empty(&self) -> bool {
        self.holder.is_none() && self.pending.is_empty()
    }
}

/// A parsed `P:sess` record.
struct Rec {
    list: bool,
    tags: Vec<Tag>,
    entry: Arc<str>,
}

impl Rec {
    fn parse(sid: &str, s: &str) -> Option<Self> {
        let mut it = s.splitn(5, '\n');
        let _host = it.next()?;
        let list = it.next()? == "1";
        let csv = it.next()?;
        let _json = it.next()?;
        let meta = it.next()?;
        let tags = if csv.is_empty() {
            Vec::new()
        } else {
            csv.split(',')
                .map(|t| Tag::new(t).ok())
                .collect::<Option<Vec<_>>>()?
        };
        let raw: Json = serde_json::value::RawValue::from_string(meta.to_owned()).ok()?;
        let entry = entry_json(sid, &tags, &raw);
        Some(Self { list, tags, entry })
    }

    fn listed_by(&self, filter: &Filter) -> bool {
        self.list && filter.matches(&self.tags)
    }
}

fn record(host: &str, list: bool, tags: &[Tag], metadata: &Json) -> String {
    format!(
        "{host}\n{}\n{}\n{}\n{}",
        if list { "1" } else { "0" },
        csv(tags),
        tags_json(tags),
        metadata.get()
    )
}

fn csv(tags: &[Tag]) -> String {
    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
}

fn tags_json(tags: &[Tag]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_owned())
}

struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<WatchEvent>,
    /// What the client has been told (sid → `add` data), once the snapshot is in;
    /// changes racing with the snapshot wait in `pending`. So a watcher sees no `add`
    /// it already has and no `remove` of a session it never saw.
    known: Option<HashMap<String, Arc<str>>>,
    pending: Vec<(String, Option<Arc<str>>)>,
}

impl Watcher {
    /// Tells the client that `sid` now shows `entry` (or nothing); false if too slow.
    fn tell(&mut self, sid: &str, entry: Option<Arc<str>>) -> bool {
        let Some(known) = self.known.as_mut() else {
            self.pending.push((sid.to_owned(), entry));
            return true;
        };
        let event = match entry {
            Some(e) => {
                if known.get(sid).is_some_and(|k| *k == e) {
                    return true;
                }
                known.insert(sid.to_owned(), Arc::clone(&e));
                WatchEvent::Add(e)
            }
            None => {
                if known.remove(sid).is_none() {
                    return true;
                }
                WatchEvent::Remove(remove_json(sid))
            }
        };
        self.tx.try_send(event).is_ok()
    }
}

#[derive(Default)]
struct Local {
    chans: HashMap<String, LocalChan>,
    watchers: HashMap<u64, Watcher>,
    next_watcher: u64,
    next_gen: u64,
}

struct Inner {
    cfg: RedisConfig,
    limits: Limits,
    node: String,
    conn: ConnectionManager,
    sub: ConnectionManager,
    scripts: Scripts,
    local: Mutex<Local>,
    detach_tx: mpsc::UnboundedSender<(String, u64)>,
    /// Detaches that failed (Redis away), retried on every beat.
    retry: Mutex<Vec<(String, u64)>>,
    /// Whether this node's inbox subscription is live (streams are refused until it is).
    subscribed: AtomicBool,
    inbox: String,
    watch: String,
    sessions: AtomicU64,
    replays: AtomicU64,
}

/// The Redis-backed registry of one broker node.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("node", &self.inner.node)
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(e: &redis::RedisError) -> ApiError {
    tracing::warn!(error = %e, "redis request failed");
    ApiError::unavailable(e.category())
}

/// A script's answer: `{'OK', …}` or `{'E', code, detail?}`.
fn answer(v: Vec<String>) -> Result<Vec<String>, ApiError> {
    match v.first().map(String::as_str) {
        Some("OK") => Ok(v),
        Some("E") => Err(match v.get(1).map(String::as_str) {
            Some("404c") => not_found_channel(),
            Some("403k") => wrong_key(),
            Some("404s") => ApiError::new(ErrorCode::NotFound, "no such session"),
            Some("403h") => ApiError::new(
                ErrorCode::Forbidden,
                "only the session's host channel may change or close it",
            ),
            Some("403o") => ApiError::new(
                ErrorCode::Forbidden,
                "the origin does not exist or the key does not own it",
            ),
            Some("404t") => ApiError::new(ErrorCode::NotFound, "no such target"),
            Some("409") => ApiError::new(
                ErrorCode::LimitReached,
                "this channel already hosts the most sessions allowed",
            ),
            Some("400") => ApiError::from(glare_proto::broker::ErrorBody::bad_request(format!(
                "Last-Event-ID is above the last id this channel has sent ({})",
                v.get(2).map_or("?", String::as_str)
            ))),
            Some("429") => {
                let ms: u64 = v.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
                let mut e = ApiError::new(
                    ErrorCode::RateLimited,
                    "the sending channel is over its rate",
                );
                e.retry_after = Some(Duration::from_millis(ms.max(1)));
                e
            }
            other => ApiError::unavailable(format!("unexpected script answer {other:?}")),
        }),
        _ => Err(ApiError::unavailable("unexpected script answer")),
    }
}

impl RedisRegistry {
    /// Starts a node on the Redis at `cfg.url` (connections are made lazily: a node
    /// starts, and answers 503, while Redis is away). Must run inside a tokio runtime.
    pub fn start(cfg: RedisConfig, limits: Limits) -> Result<Self, redis::RedisError> {
        let info = cfg.url.as_str().into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let timeouts = |c: ConnectionManagerConfig| {
            c.set_connection_timeout(Some(cfg.request_timeout))
                .set_response_timeout(Some(cfg.request_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500))
        };
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            timeouts(ConnectionManagerConfig::new()),
        )?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let sub = ConnectionManager::new_lazy_with_config(
            client,
            timeouts(ConnectionManagerConfig::new())
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )?;
        let (detach_tx, detach_rx) = mpsc::unbounded_channel();
        let node = new_id();
        let inbox = format!("{}:inbox:{node}", cfg.prefix);
        let watch = format!("{}:watch", cfg.prefix);
        let inner = Arc::new(Inner {
            inbox,
            watch,
            cfg,
            limits,
            node,
            conn,
            sub,
            scripts: Scripts::new(),
            local: Mutex::new(Local::default()),
            detach_tx,
            retry: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        });
        tokio::spawn(push_loop(Arc::downgrade(&inner), push_rx));
        tokio::spawn(detach_loop(Arc::downgrade(&inner), detach_rx));
        tokio::spawn(beat_loop(Arc::downgrade(&inner)));
        tracing::info!(node = %inner.node, prefix = %inner.cfg.prefix, "redis backplane node started");
        Ok(Self { inner })
    }

    /// Whether this node's inbox subscription is live (else streams are refused: 503).
    pub fn ready(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    async fn run(&self, script: &Script, args: &[&str]) -> Result<Vec<String>, ApiError> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.inner.cfg.prefix);
        for a in args {
            inv.arg(*a);
        }
        let v: Vec<String> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(&e))?;
        answer(v)
    }

    fn new_holder(&self, local: &mut Local, redis_gen: u64, next: u64) -> (Attachment, Holder) {
        local.next_gen += 1;
        let local_gen = local.next_gen;
        let (tx, rx) = mpsc::channel(self.inner.limits.buffer.max(16));
        let end = Arc::new(EndFlag::default());
        let holder = Holder {
            tx,
            end: Arc::clone(&end),
            local_gen,
            redis_gen,
            next,
        };
        let att = Attachment {
            auth: ChannelAuth {
                cid: String::new(),
                key: String::new(),
            },
            gap: None,
            replay: Vec::new(),
            rx,
            end,
            guard: DetachGuard::new(|| {}),
        };
        (att, holder)
    }

    fn guard(&self, cid: &str, local_gen: u64) -> DetachGuard {
        let weak = Arc::downgrade(&self.inner);
        let cid = cid.to_owned();
        DetachGuard::new(move || {
            let Some(inner) = weak.upgrade() else { return };
            let mut local = lock(&inner.local);
            let Some(ch) = local.chans.get_mut(&cid) else {
                return;
            };
            if ch.holder.as_ref().is_some_and(|h| h.local_gen == local_gen) {
                let h = ch.holder.take();
                if ch.is_empty() {
                    local.chans.remove(&cid);
                }
                if let Some(h) = h {
                    let _ = inner.detach_tx.send((cid.clone(), h.redis_gen));
                }
                tracing::debug!(%cid, "stream detached; grace period starts");
            }
        })
    }

    fn check_subscribed(&self) -> Result<(), ApiError> {
        if self.inner.subscribed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "this node's inbox subscription is not live",
            ))
        }
    }

    /// Opens a new channel homed here, or moves one here (§1.1 resume).
    pub async fn open(&self, resume: Option<Resume>) -> Result<Attachment, ApiError> {
        self.check_subscribed()?;
        match resume {
            None => {
                let (cid, key) = (new_id(), new_id());
                let burst = self.inner.limits.rate_burst.to_string();
                self.run(
                    &self.inner.scripts.open,
                    &[&cid, &key, &self.inner.node, &burst],
                )
                .await?;
                let mut local = lock(&self.inner.local);
                let (mut att, holder) = self.new_holder(&mut local, 1, 1);
                att.guard = self.guard(&cid, holder.local_gen);
                local.chans.entry(cid.clone()).or_default().holder = Some(holder);
                drop(local);
                att.auth = ChannelAuth { cid, key };
                tracing::debug!(cid = %att.auth.cid, "channel opened");
                Ok(att)
            }
            Some(r) => self.resume(r).await,
        }
    }

    async fn resume(&self, r: Resume) -> Result<Attachment, ApiError> {
        let cid = r.auth.cid.clone();
        let token = {
            let mut local = lock(&self.inner.local);
            local.next_gen += 1;
            let token = local.next_gen;
            local
                .chans
                .entry(cid.clone())
                .or_default()
                .pending
                .push(Pending {
                    token,
                    msgs: Vec::new(),
                    closed: false,
                });
            token
        };
        let seen = r.last_event_id.to_string();
        let res = self
            .run(
                &self.inner.scripts.attach,
                &[&cid, &r.auth.key, &seen, &self.inner.node],
            )
            .await;
        let mut local = lock(&self.inner.local);
        let pending = local.chans.get_mut(&cid).and_then(|ch| {
            let i = ch.pending.iter().position(|p| p.token == token)?;
            Some(ch.pending.swap_remove(i))
        });
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                if local.chans.get(&cid).is_some_and(LocalChan::is_empty) {
                    local.chans.remove(&cid);
                }
                return Err(e);
            }
        };
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let (last, redis_gen, from) = (num(1), num(2), num(3));
        let replay: Vec<Delivery> = v
            .iter()
            .skip(4)
            .zip(from..)
            .map(|(data, id)| Delivery {
                id,
                data: Arc::from(data.as_str()),
            })
            .collect();
        let gap = (from > r.last_event_id + 1).then(|| glare_proto::broker::GapEvent {
            from: r.last_event_id + 1,
            to: from - 1,
        });
        self.inner
            .replays
            .fetch_add(replay.len() as u64, Ordering::Relaxed);
        let (mut att, mut holder) = self.new_holder(&mut local, redis_gen, last + 1);
        let ch = local.chans.entry(cid.clone()).or_default();
        if let Some(old) = ch.holder.take() {
            old.end.set(EndReason::Replaced);
        }
        let closed = pending.as_ref().is_some_and(|p| p.closed);
        if let Some(p) = pending {
            for (id, data) in p.msgs {
                push(&cid, &mut holder, id, data);
            }
        }
        att.guard = self.guard(&cid, holder.local_gen);
        if closed {
            holder.end.set(EndReason::Closed);
        } else {
            ch.holder = Some(holder);
        }
        drop(local);
        att.auth = r.auth;
        att.gap = gap;
        att.replay = replay;
        tracing::debug!(%cid, last = r.last_event_id, replay = att.replay.len(), gap = ?att.gap, "channel resumed here");
        Ok(att)
    }

    /// `POST /channel/close`.
    pub async fn close_channel(&self, auth: &ChannelAuth) -> Result<(), ApiError> {
        self.run(&self.inner.scripts.close, &[&auth.cid, &auth.key])
            .await
            .map(drop)
    }

    /// `POST /session`.
    pub async fn create_session(&self, req: CreateSession) -> Result<String, ApiError> {
        let sid = new_id();
        let rec = record(&req.cid, req.list, &req.tags, &req.metadata);
        let max = self.inner.limits.max_sessions_per_channel.to_string();
        self.run(
            &self.inner.scripts.session_create,
            &[&req.cid, &req.key, &sid, &rec, &max],
        )
        .await?;
        tracing::debug!(cid = %req.cid, %sid, "session created");
        Ok(sid)
    }

    /// `POST /session/{sid}/update`.
    pub async fn update_session(&self, sid: &str, req: UpdateSession) -> Result<(), ApiError> {
        let v = req.values;
        let flag = |b: bool| if b { "1" } else { "0" };
        let (has_tags, csv, tj) = match &v.tags {
            Some(t) => ("1", csv(t), tags_json(t)),
            None => ("0", String::new(), String::new()),
        };
        let (has_meta, meta) = match &v.metadata {
            Some(m) => ("1", m.get().to_owned()),
            None => ("0", String::new()),
        };
        let (has_list, list) = match v.list {
            Some(l) => ("1", flag(l)),
            None => ("0", "1"),
        };
        self.run(
            &self.inner.scripts.session_update,
            &[
                &req.cid, &req.key, sid, has_tags, &csv, &tj, has_meta, &meta, has_list, list,
            ],
        )
        .await
        .map(drop)
    }

    /// `POST /session/{sid}/close`.
    pub async fn close_session(&self, sid: &str, auth: &ChannelAuth) -> Result<(), ApiError> {
        self.run(
            &self.inner.scripts.session_close,
            &[&auth.cid, &auth.key, sid],
        )
        .await
        .map(drop)
    }

    /// `POST /send/{target}` and the WebSocket `send`: one script on Redis.
    pub async fn send(
        &self,
        target: &str,
        origin: Origin<'_>,
        message: &str,
    ) -> Result<(), ApiError> {
        let (origin, mode, proof) = match origin {
            Origin::Keyed { origin, key } => (origin, "k", key),
            Origin::Socket { origin, cid } => (origin, "s", cid),
        };
        let l = &self.inner.limits;
        let rate = l.rate_per_sec.max(1).to_string();
        let burst = l.rate_burst.max(1).to_string();
        let buffer = l.buffer.to_string();
        let ttl = self.inner.cfg.buffer_ttl.as_millis().max(1).to_string();
        self.run(
            &self.inner.scripts.send,
            &[
                origin, mode, proof, target, message, &rate, &burst, &buffer, &ttl,
            ],
        )
        .await
        .map(drop)
    }

    async fn sessions(&self) -> Result<Vec<(String, Rec)>, ApiError> {
        let all: Vec<(String, String)> = self
            .conn()
            .hgetall(format!("{}:sess", self.inner.cfg.prefix))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut out: Vec<(String, Rec)> = all
            .into_iter()
            .filter_map(|(sid, rec)| Rec::parse(&sid, &rec).map(|r| (sid, r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// `GET /list`: the same answer on every node.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Arc<str>>, ApiError> {
        Ok(self
            .sessions()
            .await?
            .into_iter()
            .filter(|(_, r)| r.listed_by(filter))
            .map(|(_, r)| r.entry)
            .collect())
    }

    /// `GET /list` as a stream: every node's changes reach every node's watchers.
    pub async fn watch(&self, filter: Filter) -> Result<Watch, ApiError> {
        // Registered before the snapshot is read: a change racing with it is seen after
        // it (`add` is an upsert, `remove` of an unknown sid is harmless).
        let (tx, rx) = mpsc::channel(4096);
        let id = {
            let mut local = lock(&self.inner.local);
            let id = local.next_watcher;
            local.next_watcher += 1;
            local.watchers.insert(
                id,
                Watcher {
                    filter: filter.clone(),
                    tx,
                    known: None,
                    pending: Vec::new(),
                },
            );
            id
        };
        let weak = Arc::downgrade(&self.inner);
        let guard = DetachGuard::new(move || {
            if let Some(inner) = weak.upgrade() {
                lock(&inner.local).watchers.remove(&id);
            }
        });
        let snapshot: Vec<(String, Arc<str>)> = self
            .sessions()
            .await?
            .into_iter()
            .filter(|(_, r)| r.listed_by(&filter))
            .map(|(sid, r)| (sid, r.entry))
            .collect();
        let initial = snapshot.iter().map(|(_, e)| Arc::clone(e)).collect();
        let mut local = lock(&self.inner.local);
        if let Some(w) = local.watchers.get_mut(&id) {
            w.known = Some(snapshot.into_iter().collect());
            let ok = std::mem::take(&mut w.pending)
                .into_iter()
                .all(|(sid, e)| w.tell(&sid, e));
            if !ok {
                local.watchers.remove(&id);
            }
        }
        drop(local);
        Ok(Watch { initial, rx, guard })
    }

    /// Ends a channel's stream here as a dropped connection would.
    pub fn disconnect(&self, cid: &str) -> bool {
        let mut local = lock(&self.inner.local);
        let Some(ch) = local.chans.get_mut(cid) else {
            return false;
        };
        let Some(h) = ch.holder.take() else {
            return false;
        };
        h.end.set(EndReason::Overflow);
        let _ = self.inner.detach_tx.send((cid.to_owned(), h.redis_gen));
        true
    }

    /// Gauges: channels whose stream is on this node, sessions of every node (as of
    /// the last beat), watchers on this node.
    pub fn stats(&self) -> Stats {
        let local = lock(&self.inner.local);
        let watchers = local.watchers.len() as u64;
        let channels = local.chans.values().filter(|c| c.holder.is_some()).count() as u64;
        drop(local);
        Stats {
            channels,
            sessions: self.inner.sessions.load(Ordering::Relaxed),
            watchers,
            replays: self.inner.replays.load(Ordering::Relaxed),
        }
    }
}

/// Hands one inbox message to a stream: the next id goes out, an old one is a duplicate
/// (already replayed), a skipped one ends the stream so the client resumes.
fn push(cid: &str, h: &mut Holder, id: u64, data: Arc<str>) -> bool {
    if id < h.next {
        return true;
    }
    if id > h.next {
        tracing::debug!(%cid, expected = h.next, got = id, "message ids skipped; ending stream");
        h.end.set(EndReason::Overflow);
        return false;
    }
    h.next += 1;
    if h.tx.try_send(Delivery { id, data }).is_err() {
        tracing::debug!(%cid, "stream too slow or gone; ending it");
        h.end.set(EndReason::Overflow);
        return false;
    }
    true
}

impl Inner {
    /// Ends every stream here (after Redis went away: messages may have been missed).
    fn end_all(&self) {
        let mut local = lock(&self.local);
        let mut n = 0;
        for (cid, ch) in &mut local.chans {
            if let Some(h) = ch.holder.take() {
                h.end.set(EndReason::Overflow);
                let _ = self.detach_tx.send((cid.clone(), h.redis_gen));
                n += 1;
            }
        }
        local.chans.retain(|_, c| !c.is_empty());
        if n > 0 {
            tracing::info!(
                streams = n,
                "ended every stream on this node; clients resume"
            );
        }
    }

    fn on_inbox(&self, payload: &str) {
        let mut parts = payload.splitn(2, ' ');
        let (Some(kind), Some(rest)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut local = lock(&self.local);
        match kind {
            "m" => {
                let mut p = rest.splitn(3, ' ');
                let (Some(cid), Some(id), Some(data)) = (p.next(), p.next(), p.next()) else {
                    return;
                };
                let Ok(id) = id.parse::<u64>() else { return };
                let Some(ch) = local.chans.get_mut(cid) else {
                    return;
                };
                let data: Arc<str> = Arc::from(data);
                for p in &mut ch.pending {
                    p.msgs.push((id, Arc::clone(&data)));
                }
                if let Some(h) = ch.holder.as_mut()
                    && !push(cid, h, id, data)
                    && let Some(h) = ch.holder.take()
                {
                    let _ = self.detach_tx.send((cid.to_owned(), h.redis_gen));
                }
            }
            "r" => {
                let mut p = rest.splitn(2, ' ');
                let (Some(cid), Some(g)) = (p.next(), p.next()) else {
                    return;
                };
                let g: u64 = g.parse().unwrap_or(u64::MAX);
                if let Some(ch) = local.chans.get_mut(cid)
                    && ch.holder.as_ref().is_some_and(|h| h.redis_gen < g)
                    && let Some(h) = ch.holder.take()
                {
                    tracing::debug!(%cid, "resumed on another node; ending the stream here");
                    h.end.set(EndReason::Replaced);
                }
            }
            "c" => {
                if let Some(ch) = local.chans.get_mut(rest) {
                    if let Some(h) = ch.holder.take() {
                        h.end.set(EndReason::Closed);
                    }
                    for p in &mut ch.pending {
                        p.closed = true;
                    }
                }
                tracing::debug!(cid = %rest, "channel closed");
            }
            _ => {}
        }
        local.chans.retain(|_, c| !c.is_empty());
    }

    fn on_watch(&self, payload: &str) {
        let mut p = payload.splitn(3, '\0');
        let (Some(sid), Some(old), Some(new)) = (p.next(), p.next(), p.next()) else {
            return;
        };
        let _ = old;
        let new = (!new.is_empty()).then(|| Rec::parse(sid, new)).flatten();
        let mut local = lock(&self.local);
        local.watchers.retain(|_, w| {
            let entry = new
                .as_ref()
                .filter(|s| s.listed_by(&w.filter))
                .map(|s| Arc::clone(&s.entry));
            // Too slow (or gone): dropping the sender ends its stream.
            w.tell(sid, entry)
        });
    }

    async fn beat(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let timeout = self.cfg.node_timeout.as_millis().to_string();
        let grace = self.limits.grace.as_millis().to_string();
        let v: Vec<String> = self
            .scripts
            .heartbeat
            .prepare_invoke()
            .arg(&self.cfg.prefix)
            .arg(&self.node)
            .arg(&timeout)
            .arg(&grace)
            .invoke_async(&mut conn)
            .await?;
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        if num(2) > 0 {
            tracing::debug!(closed = num(2), "grace periods over: channels closed");
        }
        self.sessions.store(num(4), Ordering::Relaxed);
        if num(1) == 1 {
            // New in the node set: first beat, or declared dead while Redis was away
            // from us. Claim back the channels whose streams are here.
            let held: Vec<String> = lock(&self.local)
                .chans
                .iter()
                .filter(|(_, c)| c.holder.is_some())
                .map(|(cid, _)| cid.clone())
                .collect();
            for chunk in held.chunks(512) {
                let mut inv = self.scripts.reassert.prepare_invoke();
                inv.arg(&self.cfg.prefix).arg(&self.node);
                for cid in chunk {
                    inv.arg(cid);
                }
                let _: Vec<String> = inv.invoke_async(&mut conn).await?;
            }
        }
        let retry = std::mem::take(&mut *lock(&self.retry));
        for (cid, g) in retry {
            let _ = self.detach_tx.send((cid, g));
        }
        Ok(())
    }

    async fn detach(&self, cid: &str, redis_gen: u64) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: Vec<String> = self
            .scripts
            .detach
            .prepare_invoke()
            .arg(&self.cfg.prefix)
            .arg(cid)
            .arg(&self.node)
            .arg(redis_gen.to_string())
            .arg(self.limits.grace.as_millis().to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

async fn push_loop(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
    let mut lost = false;
    while let Some(p) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let (inbox, watch) = (&inner.inbox, &inner.watch);
        match p.kind {
            PushKind::Message => {
                let text = |v: Option<&Value>| match v {
                    Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
                    _ => None,
                };
                let (Some(channel), Some(payload)) = (text(p.data.first()), text(p.data.get(1)))
                else {
                    continue;
                };
                if channel == *inbox {
                    inner.on_inbox(&payload);
                } else if channel == *watch {
                    inner.on_watch(&payload);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis subscription lost; streams end, clients resume");
                inner.subscribed.store(false, Ordering::Release);
                lost = true;
                inner.end_all();
            }
            PushKind::Subscribe => {
                let is_inbox =
                    matches!(p.data.first(), Some(Value::BulkString(b)) if b == inbox.as_bytes());
                if is_inbox {
                    if lost {
                        // Streams attached while the subscription was down may have
                        // missed messages: have them resume once more.
                        inner.end_all();
                        lost = false;
                        tracing::info!("redis subscription back");
                    }
                    inner.subscribed.store(true, Ordering::Release);
                }
            }
            _ => {}
        }
    }
}

async fn detach_loop(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<(String, u64)>) {
    while let Some((cid, g)) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.detach(&cid, g).await {
            tracing::debug!(%cid, error = %e, "detach failed; retried on the next beat");
            lock(&inner.retry).push((cid, g));
        }
    }
}

async fn beat_loop(weak: Weak<Inner>) {
    let period = {
        let Some(inner) = weak.upgrade() else { return };
        let p = inner.cfg.heartbeat.min(inner.limits.grace / 4);
        p.clamp(Duration::from_millis(10), Duration::from_secs(1))
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if !inner.subscribed.load(Ordering::Acquire) {
            let mut sub = inner.sub.clone();
            if let Err(e) = sub.subscribe(&[&inner.inbox, &inner.watch]).await {
                tracing::debug!(error = %e, "subscribe failed; retrying");
            }
        } else {
            // Keeps the subscriber connection checked (a dead one reconnects and
            // resubscribes).
            let mut sub = inner.sub.clone();
            let _: Result<Value, _> = redis::cmd("PING").query_async(&mut sub).await;
        }
        if let Err(e) = inner.beat().await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}
