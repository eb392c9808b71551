// glare.js — the browser side of glare's PROTOCOL.md, version 1.
//
// A plain ES module with no build step and no dependencies. It runs in a browser as it
// is, and in Node (>= 20) when given an `EventSource` and an `RTCPeerConnection`
// implementation through the options (the interop harness does that).
//
//   Channel          §1.1 channel over EventSource, with its own lossless resume
//                    (EventSource cannot re-attach by itself: it is reopened with
//                    cid, key and lastEventId), sessions (§1.2–1.4), send (§1.5)
//   listSessions     §1.6 one-shot list
//   watchSessions    §1.6 live list (add / remove), reopened on error
//   Peer             hosts a session, dials, accepts; one Link per remote address
//   Link             one RTCPeerConnection: tie-breakers, perfect negotiation with
//                    rollback, trickle ICE + end-of-candidates by usernameFragment,
//                    in-band signaling over `glare-signal` (§4), `bye`
//   sendFile / receiveFile / echo      the data-channel conventions of §5
//
// Chromium behaviours handled (DESIGN.md): equal tie-breakers on the first offer start a
// fresh RTCPeerConnection instead of rolling back; the polite side waits for its offer
// to start gathering before it rolls back; an ICE restart is the backstop when a link
// does not connect; ICE role conflicts are left to the stack (it resolves 487s).

export const SIGNAL_LABEL = "glare-signal";
export const SIGNAL_PROTOCOL = "glare/1";
export const FILE_LABEL = "glare-file";
export const ECHO_LABEL = "glare-echo";
const MAX_HELD_CANDIDATES = 256;
const CONNECT_BACKSTOP_MS = 5000;
const MAX_ICE_RESTARTS = 2;

/** A tiny event emitter that works the same in browsers and Node. */
export class Emitter {
  constructor() {
    this._handlers = new Map();
  }
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type)?.delete(fn);
  }
  emit(type, value) {
    for (const fn of [...(this._handlers.get(type) ?? [])]) {
      try {
        fn(value);
      } catch (err) {
        if (type !== "error") this.emit("error", err);
      }
    }
  }
}

/** A non-2xx broker answer: `status`, `code` (PROTOCOL.md §1 table) and `message`. */
export class BrokerError extends Error {
  constructor(status, code, message, retryAfterSecs) {
    super(`${status} ${code}: ${message}`);
    this.name = "BrokerError";
    this.status = status;
    this.code = code;
    this.retryAfterSecs = retryAfterSecs;
  }
}

/** A uniformly random integer in [0, 2^53). */
export function drawTieBreaker() {
  const words = new Uint32Array(2);
  globalThis.crypto.getRandomValues(words);
  return (words[0] & 0x1fffff) * 2 ** 32 + words[1];
}

/** The `a=ice-ufrag` of an SDP (the first one), or null. */
export function iceUfragOf(sdp) {
  const m = /^a=ice-ufrag:(\S+)/m.exec(sdp ?? "");
  return m ? m[1] : null;
}

/** setLocalDescription() with no argument, or createOffer/createAnswer on older stacks. */
async function setLocal(pc) {
  try {
    await pc.setLocalDescription();
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    const d = pc.signalingState === "have-remote-offer" ? await pc.createAnswer() : await pc.createOffer();
    await pc.setLocalDescription(d);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => (globalThis.performance ?? Date).now();

function trimBase(url) {
  return String(url).replace(/\/+$/, "");
}

async function brokerPost(fetchFn, base, path, body) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetchFn(base + path, {
      method: "POST",
      // text/plain avoids a CORS preflight; the broker parses the body as JSON anyway.
      headers: { "content-type": "text/plain;charset=UTF-8" },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (res.ok) return json;
    const retry = Number(res.headers.get("retry-after"));
    if (res.status === 429 && attempt < 5) {
      await sleep(Math.max(50, (Number.isFinite(retry) ? retry : 1) * 1000));
      continue;
    }
    throw new BrokerError(res.status, json?.error ?? `http_${res.status}`, json?.message ?? text, retry || null);
  }
}

/**
 * A broker channel (PROTOCOL.md §1.1) held over EventSource. Emits
 * `message` ({id, origin, target, message}), `gap` ({from, to}), `resumed`, `lost`.
 */
export class Channel extends Emitter {
  /** Opens a new channel; resolves once the broker's `channel` event arrived. */
  static async open(broker, options = {}) {
    const ch = new Channel(broker, options);
    await ch._connect();
    return ch;
  }

  constructor(broker, options = {}) {
    super();
    this.broker = trimBase(broker);
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.resumeForMs = options.resumeForMs ?? 25000;
    this.cid = null;
    this.key = null;
    this.lastEventId = 0;
    this.closed = false;
    this._es = null;
    this._lostSince = null;
  }

  _url() {
    if (!this.cid) return `${this.broker}/channel`;
    const q = new URLSearchParams({ cid: this.cid, key: this.key, lastEventId: String(this.lastEventId) });
    return `${this.broker}/channel?${q}`;
  }

  _connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const es = new this.EventSource(this._url());
      this._es = es;
      es.addEventListener("channel", (e) => {
        const data = JSON.parse(e.data);
        const resumed = this.cid !== null;
        this.cid = data.cid;
        this.key = data.key;
        this._lostSince = null;
        if (!settled) {
          settled = true;
          resolve();
        }
        if (resumed) this.emit("resumed", { lastEventId: this.lastEventId });
      });
      es.addEventListener("message", (e) => {
        const id = Number(e.lastEventId);
        // Ids are contiguous per channel; a replay may repeat what was seen already.
        if (Number.isInteger(id) && id > 0) {
          if (id <= this.lastEventId) return;
          this.lastEventId = id;
        }
        let data;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        this.emit("message", { id, ...data });
      });
      es.addEventListener("gap", (e) => {
        try {
          const gap = JSON.parse(e.data);
          if (Number.isInteger(gap.to) && gap.to > this.lastEventId) this.lastEventId = gap.to;
          this.emit("gap", gap);
        } catch {
          /* malformed gap: ignore */
        }
      });
      es.onerror = () => {
        es.close();
        if (this._es !== es) return;
        if (!settled) {
          settled = true;
          if (this.cid === null) {
            reject(new Error(`cannot open a channel at ${this.broker}/channel`));
            return;
          }
        }
        this._resumeLater();
      };
    });
  }

  _resumeLater() {
    if (this.closed) return;
    this._lostSince ??= now();
    if (now() - this._lostSince > this.resumeForMs) {
      this.emit("lost", { cid: this.cid });
      return;
    }
    setTimeout(() => {
      if (this.closed) return;
      this._connect().catch(() => this._resumeLater());
    }, 250);
  }

  /** POST /session; resolves to the sid. */
  async createSession({ tags = [], list = true, metadata = null } = {}) {
    const r = await brokerPost(this.fetch, this.broker, "/session", { cid: this.cid, key: this.key, tags, list, metadata });
    return r.sid;
  }

  /** POST /session/{sid}/update with any subset of {tags, metadata, list}. */
  updateSession(sid, values) {
    return brokerPost(this.fetch, this.broker, `/session/${encodeURIComponent(sid)}/update`, { cid: this.cid, key: this.key, values });
  }

  /** POST /session/{sid}/close. */
  closeSession(sid) {
    return brokerPost(this.fetch, this.broker, `/session/${encodeURIComponent(sid)}/close`, { cid: this.cid, key: this.key });
  }

  /** POST /send/{target} as `origin` (this cid or one of its sessions). */
  send(origin, target, message) {
    return brokerPost(this.fetch, this.broker, `/send/${encodeURIComponent(target)}`, { origin, key: this.key, message });
  }

  /** POST /channel/close and stop the stream. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this._es?.close();
    if (this.cid) {
      await brokerPost(this.fetch, this.broker, "/channel/close", { cid: this.cid, key: this.key }).catch(() => {});
    }
  }
}

/** GET /list?filter=… once. */
export async function listSessions(broker, filter = "", options = {}) {
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  const res = await fetchFn(`${trimBase(broker)}/list?filter=${encodeURIComponent(filter)}`);
  const json = await res.json();
  if (!res.ok) throw new BrokerError(res.status, json?.error, json?.message);
  return json;
}

/**
 * Watches /list live. `onAdd({sid, session})` is an upsert, `onRemove({sid})`. Reopens
 * after an error (the first events of the new stream are the current sessions again;
 * sessions that vanished meanwhile are reported removed). Returns `{close()}`.
 */
export function watchSessions(broker, filter, { onAdd, onRemove, EventSource } = {}) {
  const ES = EventSource ?? globalThis.EventSource;
  const url = `${trimBase(broker)}/list?filter=${encodeURIComponent(filter ?? "")}`;
  const known = new Set();
  let es = null;
  let closed = false;
  const open = () => {
    const seen = new Set();
    let settleTimer = null;
    es = new ES(url);
    es.addEventListener("add", (e) => {
      const v = JSON.parse(e.data);
      known.add(v.sid);
      seen.add(v.sid);
      onAdd?.(v);
    });
    es.addEventListener("remove", (e) => {
      const v = JSON.parse(e.data);
      known.delete(v.sid);
      onRemove?.(v);
    });
    es.onopen = () => {
      // After a reopen, whatever was known and is not re-added soon is gone.
      settleTimer = setTimeout(() => {
        for (const sid of [...known]) {
          if (!seen.has(sid)) {
            known.delete(sid);
            onRemove?.({ sid });
          }
        }
      }, 500);
    };
    es.onerror = () => {
      es.close();
      clearTimeout(settleTimer);
      if (!closed) setTimeout(() => !closed && open(), 500);
    };
  };
  open();
  return {
    close() {
      closed = true;
      es?.close();
    },
  };
}

/**
 * A peer: one broker channel, one hosted session, one Link per remote address.
 * Emits `link` (a new Link), `error`.
 *
 * options: broker, tags, metadata, list, RTCPeerConnection, rtcConfig, EventSource,
 * fetch, tieBreaker (a function drawing one; an impolite-only stack returns 2^53-1),
 * freshPcOnEqualTieBreakers (default true), freshPcOnFirstGlare (default false: the
 * polite side of a first-offer collision rolls back), connectBackstopMs (default 5000:
 * not connected this long after a remote description → ICE restart), onSignal (direction
 * "in" | "out", message → void: sees every signal, for debugging), candidateFilter (candidate string → bool:
 * which local candidates to signal).
 */
export class Peer extends Emitter {
  constructor(options) {
    super();
    this.options = options;
    this.RTCPeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this.rtcConfig = options.rtcConfig ?? { iceServers: [] };
    this.drawTieBreaker = options.tieBreaker ?? drawTieBreaker;
    this.links = new Map();
    this.recentlyClosed = new Map();
    this.channel = null;
    this.sid = null;
    this.watchers = [];
  }

  async start() {
    const o = this.options;
    this.channel = await Channel.open(o.broker, { EventSource: o.EventSource, fetch: o.fetch });
    this.channel.on("message", (m) => this._onBrokerMessage(m));
    this.channel.on("lost", () => this.emit("error", new Error("broker channel lost and not resumed")));
    if (o.host !== false) {
      this.sid = await this.channel.createSession({ tags: o.tags ?? [], list: o.list ?? true, metadata: o.metadata ?? null });
    }
    return this.sid;
  }

  /** This peer's own address: its sid when it hosts a session, else its cid. */
  get address() {
    return this.sid ?? this.channel.cid;
  }

  /** Dials `remote` (a sid or cid). Returns its Link (an existing one if any). */
  dial(remote) {
    const link = this._link(this.address, remote);
    link.start();
    return link;
  }

  /** Dials every session with `tag` (other than our own) the moment it appears. */
  dialTag(tag) {
    const w = watchSessions(this.options.broker, tag, {
      EventSource: this.options.EventSource,
      onAdd: ({ sid }) => {
        if (sid !== this.sid && !this.links.has(sid)) this.dial(sid);
      },
    });
    this.watchers.push(w);
    return w;
  }

  _link(local, remote) {
    let link = this.links.get(remote);
    if (!link) {
      link = new Link(this, local, remote);
      this.links.set(remote, link);
      link.on("closed", () => {
        if (this.links.get(remote) === link) this.links.delete(remote);
        this.recentlyClosed.set(remote, now());
      });
      this.emit("link", link);
    }
    return link;
  }

  _onBrokerMessage({ origin, target, message }) {
    if (typeof origin !== "string" || !message || typeof message !== "object") return;
    let link = this.links.get(origin);
    if (!link) {
      // Only an offer or a candidate opens a link; a stray answer or bye is dropped, and
      // so are late candidates of a link that just closed.
      const isOffer = message.description?.type === "offer";
      if (!(isOffer || message.candidate)) return;
      const closedAt = this.recentlyClosed.get(origin);
      if (!isOffer && closedAt !== undefined && now() - closedAt < 10000) return;
      link = this._link(target, origin);
    }
    link.handleSignal(message);
  }

  /** Says `bye` on every link and closes the broker channel. */
  async close(reason = "peer closed") {
    for (const w of this.watchers) w.close();
    await Promise.all([...this.links.values()].map((l) => l.close(reason, true)));
    await this.channel?.close();
  }
}

/**
 * One link (PROTOCOL.md §3) = one RTCPeerConnection with a remote address.
 * Emits `connected` ({role, ms}), `datachannel` (an application RTCDataChannel),
 * `track` (an RTCTrackEvent), `closed` (reason), `warn` (Error), `role`.
 */
export class Link extends Emitter {
  constructor(peer, local, remote) {
    super();
    this.peer = peer;
    this.local = local;
    this.remote = remote;
    this.pc = null;
    this.tieBreaker = peer.drawTieBreaker();
    this.remoteTieBreaker = null;
    this.polite = null;
    this.makingOffer = false;
    this.firstNegotiation = true;
    this.started = false;
    this.closed = false;
    this.connected = false;
    this.t0 = null;
    this.connectMs = null;
    this.signalChannels = [];
    this.ignoredUfrags = new Set();
    this.knownRemoteUfrags = new Set();
    this.sentEoc = new Set();
    this.held = [];
    this.queue = Promise.resolve();
    this._brokerChain = Promise.resolve();
    this.iceRestarts = 0;
    this.backstop = null;
    this.stats = { rollbacks: 0, ignoredOffers: 0, freshPcs: 0, iceRestarts: 0 };
  }

  get role() {
    return this.polite === null ? "unknown" : this.polite ? "polite" : "impolite";
  }

  _mark() {
    this.t0 ??= now();
  }

  _newPc() {
    const pc = new this.peer.RTCPeerConnection(this.peer.rtcConfig);
    this.pc = pc;
    this.signalChannels = [];
    pc.onicecandidate = (e) => {
      if (this.pc !== pc) return;
      const ufrag = e.candidate?.usernameFragment || iceUfragOf(pc.localDescription?.sdp);
      if (!e.candidate || !e.candidate.candidate) {
        if (!ufrag || this.sentEoc.has(ufrag)) return;
        this.sentEoc.add(ufrag);
        this._send({ candidate: { candidate: "", usernameFragment: ufrag } });
        return;
      }
      const c = e.candidate;
      const keep = this.peer.options.candidateFilter;
      if (keep && !keep(c.candidate)) return;
      this._send({
        candidate: { candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null, usernameFragment: ufrag },
      });
    };
    pc.ondatachannel = (e) => this._routeChannel(e.channel);
    pc.ontrack = (e) => {
      if (this.pc === pc) this.emit("track", e);
    };
    pc.onnegotiationneeded = () => {
      if (this.pc === pc && this.started) this._enqueue(() => this._negotiate());
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "failed") this._enqueue(() => this._restartOrFail("connection failed"));
      if (pc.connectionState === "closed" && this.connected) this._finish(this.closingReason ?? "connection closed");
    };
    return pc;
  }

  _openSignalChannel() {
    const dc = this.pc.createDataChannel(SIGNAL_LABEL, { ordered: true, protocol: SIGNAL_PROTOCOL });
    this._routeChannel(dc);
  }

  _routeChannel(dc) {
    if (dc.label === SIGNAL_LABEL) {
      this.signalChannels.push(dc);
      const onOpen = () => this._onSignalOpen(dc);
      dc.onmessage = (e) => {
        if (typeof e.data !== "string") return;
        let msg;
        try {
          msg = JSON.parse(e.data);
        } catch {
          return;
        }
        this.handleSignal(msg);
      };
      dc.onclose = () => {
        this.signalChannels = this.signalChannels.filter((c) => c !== dc);
      };
      if (dc.readyState === "open") onOpen();
      else {
        dc.onopen = onOpen;
        waitOpen(dc, 60000).then(onOpen, () => {});
      }
      return;
    }
    this.emit("datachannel", dc);
  }

  _onSignalOpen(dc) {
    if (this.connected || this.closed || !this.signalChannels.includes(dc)) return;
    this.connected = true;
    clearTimeout(this.backstop);
    this.connectMs = Math.round(now() - (this.t0 ?? now()));
    this.emit("connected", { role: this.role, ms: this.connectMs });
  }

  /** The open glare-signal channel with the lowest SCTP stream id, if any. */
  _signalChannel() {
    let best = null;
    for (const dc of this.signalChannels) {
      if (dc.readyState !== "open") continue;
      if (!best || (dc.id ?? 65535) < (best.id ?? 65535)) best = dc;
    }
    return best;
  }

  _send(message) {
    this._mark();
    this.peer.options.onSignal?.("out", message);
    const dc = this._signalChannel();
    if (dc) {
      try {
        dc.send(JSON.stringify(message));
        return;
      } catch {
        /* fall back to the broker */
      }
    }
    // One POST at a time per link, so the broker relays signals in the order they were made.
    this._brokerChain = this._brokerChain
      .then(() => this.peer.channel.send(this.local, this.remote, message))
      .catch((err) => {
        if (!this.closed) this.emit("warn", err);
      });
  }

  _enqueue(fn) {
    const run = this.queue.then(fn).catch((err) => {
      if (!this.closed) this.emit("warn", err);
    });
    this.queue = run;
    return run;
  }

  /** Starts the link from this side: a glare-signal channel and an offer. */
  start() {
    if (this.started || this.closed) return;
    this.started = true;
    this._mark();
    this._enqueue(async () => {
      if (!this.pc) this._newPc();
      if (this.signalChannels.length === 0) this._openSignalChannel();
      await this._negotiate();
    });
  }

  /** Adds a media track; the offer that carries it goes over glare-signal once open. */
  addTrack(track, ...streams) {
    return this.pc.addTrack(track, ...streams);
  }

  /** Creates an application data channel (renegotiates if the stack needs it). */
  createDataChannel(label, init = { ordered: true }) {
    return this.pc.createDataChannel(label, init);
  }

  async _negotiate() {
    const pc = this.pc;
    if (this.closed || !pc || pc.signalingState !== "stable" || this.makingOffer) return;
    this.makingOffer = true;
    try {
      await setLocal(pc);
      if (this.pc !== pc) return;
      const d = pc.localDescription;
      this._send({ description: { type: d.type, sdp: d.sdp }, tieBreaker: this.tieBreaker });
    } finally {
      this.makingOffer = false;
    }
  }

  /** Feeds one signal of PROTOCOL.md §2, from the broker or the glare-signal channel. */
  handleSignal(msg) {
    if (this.closed || !msg || typeof msg !== "object") return;
    this.peer.options.onSignal?.("in", msg);
    if (msg.bye) {
      this._finish(`bye${msg.bye.reason ? ": " + msg.bye.reason : ""}`);
      return;
    }
    this._mark();
    if (msg.description) this._enqueue(() => this._onDescription(msg.description, msg.tieBreaker));
    else if (msg.candidate) this._enqueue(() => this._onCandidate(msg.candidate));
  }

  async _waitGatheringStarted(pc, ms) {
    const t = now();
    while (pc.iceGatheringState === "new" && now() - t < ms) await sleep(10);
  }

  async _onDescription(description, tieBreaker) {
    if (this.closed || !description || typeof description.sdp !== "string") return;
    if (Number.isSafeInteger(tieBreaker) && tieBreaker >= 0) this.remoteTieBreaker = tieBreaker;
    const ufrag = iceUfragOf(description.sdp);
    if (description.type === "offer") {
      const collision = this.makingOffer || (this.pc && this.pc.signalingState !== "stable");
      if (collision) {
        if (this.remoteTieBreaker === this.tieBreaker) {
          // Equal numbers: both drop their offers, draw again, offer again after 0–50 ms.
          this.ignoredUfrags.add(ufrag);
          this.tieBreaker = this.peer.drawTieBreaker();
          if (this.firstNegotiation && this.peer.options.freshPcOnEqualTieBreakers !== false) {
            const old = this.pc;
            this._newPc();
            old.close();
            this.stats.freshPcs++;
            this._openSignalChannel();
          } else {
            await this.pc.setLocalDescription({ type: "rollback" });
            this.stats.rollbacks++;
          }
          await sleep(Math.random() * 50);
          await this._negotiate();
          return;
        }
        this._setRole();
        if (!this.polite) {
          this.ignoredUfrags.add(ufrag);
          this.stats.ignoredOffers++;
          return;
        }
        const appMid = (sdp) => /^m=application [^]*?^a=mid:(\S+)/m.exec(sdp ?? "")?.[1] ?? null;
        const ownMid = appMid(this.pc?.localDescription?.sdp);
        const theirMid = appMid(description.sdp);
        if (
          this.firstNegotiation &&
          (this.peer.options.freshPcOnFirstGlare || (ownMid !== null && theirMid !== null && ownMid !== theirMid))
        ) {
          // Stacks whose rollback of a first offer is unreliable (libdatachannel may
          // lose its ICE transport) start over with a fresh connection, as in the seed.
          // So does every stack when the remote offer's m=application has another mid
          // than the offer rolled back: Chromium then fails the answer with "Failed to
          // start SCTP transport" (every time; interop/repro-chromium-rollback-sctp.mjs).
          const old = this.pc;
          this._newPc();
          old.close();
          this.stats.freshPcs++;
        } else {
          // Chromium may never gather for its answer if it rolls back an offer that has
          // not started gathering yet: give it a moment first.
          await this._waitGatheringStarted(this.pc, 1000);
          await this.pc.setLocalDescription({ type: "rollback" });
          this.stats.rollbacks++;
        }
      } else {
        if (!this.pc) this._newPc();
        this.started = true;
        if (this.remoteTieBreaker === this.tieBreaker) this.tieBreaker = this.peer.drawTieBreaker();
        this._setRole();
      }
      await this.pc.setRemoteDescription({ type: "offer", sdp: description.sdp });
      this._appliedRemote(ufrag);
      await setLocal(this.pc);
      const d = this.pc.localDescription;
      this._send({ description: { type: d.type, sdp: d.sdp }, tieBreaker: this.tieBreaker });
      this.firstNegotiation = false;
      this._armBackstop();
      await this._flushHeld();
      return;
    }
    if (description.type === "answer") {
      if (!this.pc || this.pc.signalingState !== "have-local-offer") return; // stale
      this._setRole();
      await this.pc.setRemoteDescription({ type: "answer", sdp: description.sdp });
      this._appliedRemote(ufrag);
      this.firstNegotiation = false;
      this._armBackstop();
      await this._flushHeld();
    }
  }

  _setRole() {
    if (this.remoteTieBreaker === null) return;
    const polite = this.tieBreaker < this.remoteTieBreaker;
    if (polite !== this.polite) {
      this.polite = polite;
      this.emit("role", this.role);
    }
  }

  _appliedRemote(ufrag) {
    if (ufrag) this.knownRemoteUfrags.add(ufrag);
  }

  async _onCandidate(c) {
    if (this.closed || typeof c !== "object" || typeof c.candidate !== "string") return;
    const ufrag = c.usernameFragment ?? null;
    if (ufrag && this.ignoredUfrags.has(ufrag)) return;
    const current = iceUfragOf(this.pc?.remoteDescription?.sdp);
    if (!current || (ufrag && ufrag !== current)) {
      if (ufrag && this.knownRemoteUfrags.has(ufrag)) return; // an older generation
      if (this.held.length < MAX_HELD_CANDIDATES) this.held.push(c);
      return;
    }
    await this._applyCandidate(c);
  }

  async _applyCandidate(c) {
    try {
      if (c.candidate === "") {
        // End-of-candidates for this generation.
        const eoc = { candidate: "", usernameFragment: c.usernameFragment };
        if (c.sdpMid != null) eoc.sdpMid = c.sdpMid;
        if (c.sdpMLineIndex != null) eoc.sdpMLineIndex = c.sdpMLineIndex;
        if (eoc.sdpMid == null && eoc.sdpMLineIndex == null) eoc.sdpMLineIndex = 0;
        await this.pc.addIceCandidate(eoc);
      } else {
        const init = { candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null };
        if (init.sdpMid == null && init.sdpMLineIndex == null) init.sdpMLineIndex = 0;
        if (c.usernameFragment) init.usernameFragment = c.usernameFragment;
        await this.pc.addIceCandidate(init);
      }
    } catch (err) {
      // An unusable candidate (e.g. an unresolvable .local name) is not fatal.
      this.emit("warn", err);
    }
  }

  async _flushHeld() {
    const current = iceUfragOf(this.pc?.remoteDescription?.sdp);
    const held = this.held;
    this.held = [];
    for (const c of held) {
      if (!c.usernameFragment || c.usernameFragment === current) await this._applyCandidate(c);
      else if (!this.knownRemoteUfrags.has(c.usernameFragment) && !this.ignoredUfrags.has(c.usernameFragment)) this.held.push(c);
    }
  }

  _armBackstop() {
    clearTimeout(this.backstop);
    if (this.connected) return;
    this.backstop = setTimeout(() => {
      if (!this.connected && !this.closed) this._enqueue(() => this._restartOrFail("not connected in time"));
    }, this.peer.options.connectBackstopMs ?? CONNECT_BACKSTOP_MS);
  }

  async _restartOrFail(why) {
    if (this.closed) return;
    const pc = this.pc;
    if (this.iceRestarts < MAX_ICE_RESTARTS && typeof pc.restartIce === "function" && pc.signalingState === "stable") {
      try {
        pc.restartIce();
        this.iceRestarts++;
        this.stats.iceRestarts++;
        this.emit("warn", new Error(`${why}: restarting ICE`));
        await this._negotiate();
        this._armBackstop();
        return;
      } catch {
        /* the stack cannot restart ICE */
      }
    }
    if (this.connected || this.iceRestarts >= MAX_ICE_RESTARTS) this.close(why, true);
    else this._armBackstop();
  }

  _finish(reason) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.backstop);
    try {
      this.pc?.close();
    } catch {
      /* already closed */
    }
    this.emit("closed", reason);
  }

  /** Ends the link; with `sayBye`, tells the other side first (PROTOCOL.md §2). */
  async close(reason = "closed", sayBye = true) {
    if (this.closed) return;
    this.closingReason = reason;
    if (sayBye) {
      const msg = { bye: { reason } };
      const dc = this._signalChannel();
      if (dc) {
        try {
          dc.send(JSON.stringify(msg));
        } catch {
          /* closing anyway */
        }
      }
      await this._brokerChain;
      await this.peer.channel?.send(this.local, this.remote, msg).catch(() => {});
    }
    this._finish(reason);
  }
}

// ---------------------------------------------------------------------------------
// Data-channel conventions (PROTOCOL.md §5)

export function toHex(buf) {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(bytes) {
  return toHex(await globalThis.crypto.subtle.digest("SHA-256", bytes));
}

// Polls readyState as well as listening: libwebrtc (wrtc) may open a channel created in
// another channel's event handler without firing its `open` event.
function waitOpen(dc, ms = 30000) {
  return new Promise((resolve, reject) => {
    const t = now();
    const tick = () => {
      if (dc.readyState === "open") return resolve();
      if (dc.readyState === "closing" || dc.readyState === "closed") return reject(new Error("data channel closed before it opened"));
      if (now() - t > ms) return reject(new Error(`data channel not open after ${ms} ms`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

async function drain(dc, high) {
  const t = now();
  while (dc.bufferedAmount > high) {
    if (dc.readyState !== "open") throw new Error("data channel closed while sending");
    await new Promise((r) => {
      const timer = setTimeout(r, 5);
      dc.onbufferedamountlow = () => {
        clearTimeout(timer);
        r();
      };
    });
    if (now() - t > 120000) throw new Error("data channel stalled for 120 s");
  }
}

/**
 * Sends `bytes` (Uint8Array) named `name` on a new `glare-file` channel of `link`.
 * Resolves to {name, size, sha256, mbps} once the receiver acknowledged a matching hash.
 */
export async function sendFile(link, name, bytes, { chunk = 16384 } = {}) {
  const sha256 = await sha256Hex(bytes);
  const dc = link.createDataChannel(FILE_LABEL, { ordered: true });
  dc.binaryType = "arraybuffer";
  const ack = new Promise((resolve, reject) => {
    dc.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      try {
        resolve(JSON.parse(e.data));
      } catch {
        reject(new Error("the receiver's acknowledgement is not JSON"));
      }
    };
    const prevClose = dc.onclose;
    dc.onclose = (e) => {
      prevClose?.(e);
      reject(new Error("the file channel closed before the acknowledgement"));
    };
  });
  ack.catch(() => {});
  await waitOpen(dc);
  const t = now();
  dc.bufferedAmountLowThreshold = 1 << 20;
  dc.send(JSON.stringify({ name, size: bytes.length, sha256 }));
  for (let off = 0; off < bytes.length; off += chunk) {
    await drain(dc, 4 << 20);
    dc.send(bytes.subarray(off, Math.min(off + chunk, bytes.length)));
  }
  const answer = await ack;
  const ms = Math.max(1, now() - t);
  dc.close();
  if (!answer.ok) throw new Error(`the receiver rejected ${name}: ${answer.error}`);
  if (answer.sha256 !== sha256) throw new Error(`the receiver's sha256 ${answer.sha256} is not ${sha256}`);
  return { name, size: bytes.length, sha256, mbps: (bytes.length * 8) / (ms * 1000) };
}

/**
 * Receives one file on an incoming `glare-file` channel. Resolves to
 * {name, size, sha256, bytes, mbps, closed} where `closed` resolves when the sender
 * closed the channel or 3 s after the acknowledgement.
 */
export function receiveFile(dc, { maxSize = 1 << 30 } = {}) {
  dc.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    let header = null;
    let parts = [];
    let got = 0;
    let t = 0;
    let closedResolve;
    const closed = new Promise((r) => (closedResolve = r));
    dc.onclose = () => {
      closedResolve();
      if (!header || got < header.size) reject(new Error("file channel closed before the whole file arrived"));
    };
    dc.onmessage = async (e) => {
      if (!header) {
        if (typeof e.data !== "string") return reject(new Error(`the first file message is not text (${e.data?.byteLength ?? typeof e.data} bytes)`));
        try {
          header = JSON.parse(e.data);
        } catch {
          return reject(new Error("the file header is not JSON"));
        }
        if (typeof header.name !== "string" || !Number.isSafeInteger(header.size) || header.size < 0 || header.size > maxSize) {
          dc.send(JSON.stringify({ ok: false, error: "bad header" }));
          return reject(new Error("bad file header"));
        }
        t = now();
        if (header.size === 0) await finish();
        return;
      }
      if (typeof e.data === "string") return;
      const chunk = new Uint8Array(e.data);
      parts.push(chunk);
      got += chunk.length;
      if (got >= header.size) await finish();
    };
    const finish = async () => {
      const bytes = new Uint8Array(got);
      let off = 0;
      for (const p of parts) {
        bytes.set(p, off);
        off += p.length;
      }
      parts = [];
      const sha256 = await sha256Hex(bytes);
      const ms = Math.max(1, now() - t);
      const ok = got === header.size && sha256 === String(header.sha256).toLowerCase();
      dc.send(JSON.stringify(ok ? { ok: true, sha256 } : { ok: false, error: got !== header.size ? "size mismatch" : "sha256 mismatch" }));
      setTimeout(closedResolve, 3000);
      if (!ok) {
        const err = new Error(`${header.name}: ${got !== header.size ? "size" : "sha256"} mismatch`);
        err.bytes = bytes;
        err.fileName = header.name;
        return reject(err);
      }
      resolve({ name: header.name, size: got, sha256, bytes, mbps: (got * 8) / (ms * 1000), closed });
    };
  });
}

/** Echoes every message on `dc` back unchanged (text as text, binary as binary). */
export function echo(dc) {
  dc.binaryType = "arraybuffer";
  dc.onmessage = (e) => {
    try {
      dc.send(e.data);
    } catch {
      /* channel closing */
    }
  };
}

/**
 * Sends `count` small text messages on a new `glare-echo` channel and checks each comes
 * back unchanged and in order. Resolves to {count, ms}.
 */
export async function pingEcho(link, count, { window = 64 } = {}) {
  const dc = link.createDataChannel(ECHO_LABEL, { ordered: true });
  await waitOpen(dc);
  const t = now();
  let next = 0;
  let back = 0;
  await new Promise((resolve, reject) => {
    const pump = () => {
      while (next < count && next - back < window) dc.send(`ping ${next++} ${"x".repeat(32)}`);
    };
    dc.onmessage = (e) => {
      const want = `ping ${back} ${"x".repeat(32)}`;
      if (e.data !== want) return reject(new Error(`echo ${back}: got ${String(e.data).slice(0, 40)}`));
      back++;
      if (back === count) resolve();
      else pump();
    };
    dc.onclose = () => reject(new Error(`echo channel closed after ${back} of ${count}`));
    pump();
  });
  dc.onclose = null;
  dc.close();
  return { count, ms: Math.round(now() - t) };
}
