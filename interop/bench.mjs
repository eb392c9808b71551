#!/usr/bin/env node
// Measures one WebRTC stack by itself, in one process: two peer connections pass their
// signals to each other directly (no broker), on the loopback of a network namespace
// this script creates (--no-netns to run where it is). Prints one JSON object per line:
//
//   {"stack":S,"row":"setup","runs":N,"median_ms":…,"p99_ms":…,"min_ms":…,"max_ms":…}
//   {"stack":S,"row":"throughput","bytes":…,"message_bytes":16384,"secs":…,"mbps":…}
//   {"stack":S,"row":"aggregate","connections":10,"bytes":…,"secs":…,"mbps":…}
//   {"stack":S,"row":"memory","connections":100,"rss_before":…,"rss_after":…,"bytes_per_connection":…}
//   {"stack":S,"row":R,"error":"…"}            (a row the stack could not do)
//
//   node bench.mjs --stack ndc|wrtc|werift|aiortc [--rows setup,throughput,aggregate,memory]
//                  [--runs 100] [--bytes 268435456] [--connections 10] [--memory-connections 100]
//                  [--row-timeout 600]   (seconds one transfer may take; then the row fails)
//
// setup: from createOffer to the offerer's data channel being open, sequential runs.
// throughput: one reliable ordered channel, `bytes` in 16 KiB messages, from the first
// send to the last byte received. aggregate: `connections` connections at once, each
// sending bytes/connections, total received bytes over the wall time. memory: RSS after
// opening `memory-connections` connected links (each link is both ends, in this
// process, with one open data channel) minus RSS before, divided by the link count.

import { fileURLToPath } from "node:url";
import { spawn } from "node:child_process";
import path from "node:path";
import { reexecInNetns } from "./lib/netns.mjs";

const args = process.argv.slice(2);
const opt = { stack: null, rows: ["setup", "throughput", "aggregate", "memory"], runs: 100, bytes: 256 << 20, connections: 10, memConnections: 100, rowTimeout: 600, netns: true, inside: false };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const v = () => args[++i];
  if (a === "--stack") opt.stack = v();
  else if (a === "--rows") opt.rows = v().split(",");
  else if (a === "--runs") opt.runs = Number(v());
  else if (a === "--bytes") opt.bytes = Number(v());
  else if (a === "--connections") opt.connections = Number(v());
  else if (a === "--memory-connections") opt.memConnections = Number(v());
  else if (a === "--row-timeout") opt.rowTimeout = Number(v());
  else if (a === "--no-netns") opt.netns = false;
  else if (a === "--inside") opt.inside = true;
  else {
    console.error(`bench: unknown argument ${a}`);
    process.exit(2);
  }
}
if (!["ndc", "wrtc", "werift", "aiortc"].includes(opt.stack)) {
  console.error("bench: --stack ndc|wrtc|werift|aiortc is required");
  process.exit(2);
}
if (opt.netns && !opt.inside) process.exit(await reexecInNetns(fileURLToPath(import.meta.url), args, "bench"));
if (opt.rows.length > 1) {
  // Each row in a fresh process, so one row's garbage does not move another's RSS.
  const self = fileURLToPath(import.meta.url);
  const rest = args.filter((a, i) => a !== "--rows" && args[i - 1] !== "--rows" && a !== "--inside");
  let worst = 0;
  for (const row of opt.rows) {
    const child = spawn(process.execPath, [...process.execArgv, self, ...rest, "--rows", row, "--no-netns"], { stdio: "inherit" });
    worst = Math.max(worst, await new Promise((r) => child.on("exit", (c) => r(c ?? 1))));
  }
  process.exit(worst);
}
if (opt.stack === "aiortc") {
  // The same rows in Python (bench_aiortc.py), in this namespace.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const py = spawn(path.join(here, ".venv/bin/python"), [
    path.join(here, "bench_aiortc.py"),
    "--rows", opt.rows.join(","),
    "--runs", String(opt.runs),
    "--bytes", String(opt.bytes),
    "--connections", String(opt.connections),
    "--memory-connections", String(opt.memConnections),
    "--row-timeout", String(opt.rowTimeout),
  ], { stdio: "inherit" });
  process.exit(await new Promise((r) => py.on("exit", (c) => r(c ?? 1))));
}

const MSG = 16384;
const ROW_TIMEOUT_MS = opt.rowTimeout * 1000;
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let PC;
let cfg = { iceServers: [] };
let cleanup = () => {};
if (opt.stack === "ndc") {
  const m = await import("./lib/ndc-rtc.mjs");
  PC = m.NdcPeerConnection;
  cfg = { iceServers: [], bindAddress: "127.0.0.1" };
  cleanup = m.cleanup;
} else if (opt.stack === "wrtc") {
  PC = (await import("./lib/wrtc-fix.mjs")).default.RTCPeerConnection;
} else {
  PC = (await import("werift")).RTCPeerConnection;
  cfg = { iceServers: [], iceUseIpv6: false };
}

async function setLocal(pc) {
  try {
    await pc.setLocalDescription();
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    const d = pc.signalingState === "have-remote-offer" ? await pc.createAnswer() : await pc.createOffer();
    await pc.setLocalDescription(d);
  }
}

function waitOpen(dc, ms = 30000) {
  return new Promise((resolve, reject) => {
    const t = now();
    const tick = () => {
      if (dc.readyState === "open") return resolve();
      if (now() - t > ms) return reject(new Error(`data channel not open after ${ms} ms`));
      setTimeout(tick, 1);
    };
    dc.onopen = () => resolve();
    tick();
  });
}

/** Two connected peer connections with one open reliable ordered channel. */
async function connectPair() {
  const a = new PC(cfg);
  const b = new PC(cfg);
  const held = { a: [], b: [] };
  const ready = { a: false, b: false };
  const deliver = (to, name, c) => {
    if (!c || !c.candidate) return;
    const init = { candidate: c.candidate, sdpMid: c.sdpMid ?? "0", sdpMLineIndex: c.sdpMLineIndex ?? 0 };
    if (ready[name]) to.addIceCandidate(init).catch(() => {});
    else held[name].push(init);
  };
  a.onicecandidate = (e) => deliver(b, "b", e.candidate);
  b.onicecandidate = (e) => deliver(a, "a", e.candidate);
  const remote = new Promise((r) => {
    b.ondatachannel = (e) => r(e.channel);
  });
  const t0 = now();
  const dc = a.createDataChannel("bench", { ordered: true });
  await setLocal(a);
  await b.setRemoteDescription({ type: "offer", sdp: a.localDescription.sdp });
  ready.b = true;
  for (const c of held.b.splice(0)) b.addIceCandidate(c).catch(() => {});
  await setLocal(b);
  await a.setRemoteDescription({ type: "answer", sdp: b.localDescription.sdp });
  ready.a = true;
  for (const c of held.a.splice(0)) a.addIceCandidate(c).catch(() => {});
  await waitOpen(dc);
  const ms = now() - t0;
  const rdc = await remote;
  await waitOpen(rdc);
  return { a, b, dc, rdc, ms };
}

function closePair(p) {
  try {
    p.a.close();
  } catch {}
  try {
    p.b.close();
  } catch {}
}

async function drain(dc, high, deadline, progress) {
  while (dc.bufferedAmount > high) {
    if (now() > deadline) throw new Error(`stalled: ${progress()} after ${ROW_TIMEOUT_MS / 1000} s`);
    await new Promise((r) => {
      const timer = setTimeout(r, 2);
      dc.onbufferedamountlow = () => {
        clearTimeout(timer);
        r();
      };
    });
  }
}

/** Sends `bytes` over p.dc; resolves to seconds from first send to last byte received. */
async function transfer(p, bytes) {
  const chunk = new Uint8Array(MSG);
  let got = 0;
  p.rdc.binaryType = "arraybuffer";
  const done = new Promise((resolve) => {
    p.rdc.onmessage = (e) => {
      got += e.data.byteLength ?? e.data.length;
      if (got >= bytes) resolve();
    };
  });
  p.dc.bufferedAmountLowThreshold = 1 << 20;
  const t0 = now();
  for (let sent = 0; sent < bytes; sent += MSG) {
    if (p.dc.bufferedAmount > 4 << 20) await drain(p.dc, 1 << 20, t0 + ROW_TIMEOUT_MS, () => `${sent} of ${bytes} bytes sent, ${got} received`);
    p.dc.send(chunk);
  }
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not done after ${ROW_TIMEOUT_MS / 1000} s: ${got} of ${bytes} bytes received`)), ROW_TIMEOUT_MS);
  });
  try {
    await Promise.race([done, late]);
  } finally {
    clearTimeout(timer);
  }
  return (now() - t0) / 1000;
}

const out = (o) => console.log(JSON.stringify({ stack: opt.stack, ...o }));
const pct = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];

for (const row of opt.rows) {
  try {
    if (row === "setup") {
      const times = [];
      for (let i = 0; i < opt.runs; i++) {
        const p = await connectPair();
        times.push(p.ms);
        closePair(p);
        await sleep(5);
      }
      times.sort((x, y) => x - y);
      const r = (x) => Math.round(x * 100) / 100;
      out({ row, runs: times.length, median_ms: r(pct(times, 0.5)), p99_ms: r(pct(times, 0.99)), min_ms: r(times[0]), max_ms: r(times.at(-1)) });
    } else if (row === "throughput") {
      const p = await connectPair();
      const secs = await transfer(p, opt.bytes);
      closePair(p);
      out({ row, bytes: opt.bytes, message_bytes: MSG, secs: Math.round(secs * 1000) / 1000, mbps: Math.round((opt.bytes * 8) / secs / 1e4) / 100 });
    } else if (row === "aggregate") {
      const pairs = [];
      for (let i = 0; i < opt.connections; i++) pairs.push(await connectPair());
      const each = Math.floor(opt.bytes / opt.connections / MSG) * MSG;
      const t0 = now();
      await Promise.all(pairs.map((p) => transfer(p, each)));
      const secs = (now() - t0) / 1000;
      pairs.forEach(closePair);
      const total = each * opt.connections;
      out({ row, connections: opt.connections, bytes: total, secs: Math.round(secs * 1000) / 1000, mbps: Math.round((total * 8) / secs / 1e4) / 100 });
    } else if (row === "memory") {
      global.gc?.();
      await sleep(500);
      const before = process.memoryUsage().rss;
      const pairs = [];
      for (let i = 0; i < opt.memConnections; i++) pairs.push(await connectPair());
      await sleep(1000);
      global.gc?.();
      const after = process.memoryUsage().rss;
      out({ row, connections: opt.memConnections, rss_before: before, rss_after: after, bytes_per_connection: Math.round((after - before) / opt.memConnections) });
      pairs.forEach(closePair);
    } else {
      out({ row, error: "unknown row" });
    }
  } catch (e) {
    out({ row, error: String(e?.message ?? e) });
  }
}
cleanup();
process.exit(0);
