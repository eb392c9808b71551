#!/usr/bin/env node
// Tests of glare.js's broker side (Channel, resume, sessions, list, watch, errors)
// against a real glare broker on 127.0.0.1, with node's test runner:
//
//   node --test test-glarejs.mjs            (GLARE_BIN=path/to/glare, default ../target/release/glare)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { EventSource } from "./lib/eventsource.mjs";
import { GLARE_JS } from "./lib/node-cli.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const bin = process.env.GLARE_BIN ?? path.join(here, "../target/release/glare");
const G = await import(GLARE_JS);
let broker;
let url;
const opts = { EventSource };

before(async () => {
  broker = spawn(bin, ["broker", "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "ignore"] });
  url = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("broker did not start")), 15000);
    readline.createInterface({ input: broker.stdout }).on("line", (l) => {
      const m = /^listening (\S+)/.exec(l);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
  });
});
after(() => broker?.kill("SIGTERM"));

const within = (p, ms, what) => Promise.race([p, new Promise((_, r) => setTimeout(() => r(new Error(`timeout: ${what}`)), ms))]);
function nextMessages(ch, n) {
  return new Promise((resolve) => {
    const got = [];
    const off = ch.on("message", (m) => {
      got.push(m);
      if (got.length === n) {
        off();
        resolve(got);
      }
    });
  });
}

test("a channel opens, sends to another and receives in order with contiguous ids", async () => {
  const a = await G.Channel.open(url, opts);
  const b = await G.Channel.open(url, opts);
  assert.match(a.cid, /^[A-Za-z0-9]+$/);
  const got = nextMessages(b, 3);
  for (let i = 0; i < 3; i++) await a.send(a.cid, b.cid, { n: i });
  const msgs = await within(got, 5000, "messages");
  assert.deepEqual(msgs.map((m) => m.message.n), [0, 1, 2]);
  assert.deepEqual(msgs.map((m) => m.id), [1, 2, 3]);
  assert.equal(msgs[0].origin, a.cid);
  assert.equal(msgs[0].target, b.cid);
  await a.close();
  await b.close();
});

test("resume after a dropped stream loses nothing and repeats nothing", async () => {
  const a = await G.Channel.open(url, opts);
  const b = await G.Channel.open(url, opts);
  const first = nextMessages(b, 2);
  await a.send(a.cid, b.cid, { n: 0 });
  await a.send(a.cid, b.cid, { n: 1 });
  await within(first, 5000, "first two");
  const resumed = new Promise((r) => b.on("resumed", r));
  const rest = nextMessages(b, 3);
  // Drop the stream the way a network would: the EventSource errors.
  b._es.close();
  b._es.onerror();
  for (let i = 2; i < 5; i++) await a.send(a.cid, b.cid, { n: i });
  await within(resumed, 5000, "resume");
  const msgs = await within(rest, 5000, "replayed messages");
  assert.deepEqual(msgs.map((m) => m.message.n), [2, 3, 4]);
  assert.deepEqual(msgs.map((m) => m.id), [3, 4, 5]);
  assert.equal(b.lastEventId, 5);
  await a.close();
  await b.close();
});

test("sessions: create, list with a filter, update, watch add/remove, close", async () => {
  const host = await G.Channel.open(url, opts);
  const tag = `t${Date.now()}`;
  const adds = [];
  const removes = [];
  const w = G.watchSessions(url, tag, { EventSource, onAdd: (v) => adds.push(v), onRemove: (v) => removes.push(v) });
  const sid = await host.createSession({ tags: [tag, "x"], metadata: { name: "n1" } });
  const listed = await G.listSessions(url, `${tag},!nope`);
  assert.equal(listed.length, 1);
  assert.equal(listed[0].sid, sid);
  assert.deepEqual(listed[0].session.tags, [tag, "x"]);
  await host.updateSession(sid, { metadata: { name: "n2" } });
  await within(
    (async () => {
      while (!adds.some((v) => v.session.metadata?.name === "n2")) await new Promise((r) => setTimeout(r, 20));
    })(),
    5000,
    "watch upsert",
  );
  await host.closeSession(sid);
  await within(
    (async () => {
      while (!removes.some((v) => v.sid === sid)) await new Promise((r) => setTimeout(r, 20));
    })(),
    5000,
    "watch remove",
  );
  assert.equal((await G.listSessions(url, tag)).length, 0);
  w.close();
  await host.close();
});

test("broker errors surface as BrokerError with the protocol's code", async () => {
  const a = await G.Channel.open(url, opts);
  await assert.rejects(a.send(a.cid, "NoSuchTarget0123456789", { x: 1 }), (e) => e instanceof G.BrokerError && e.status === 404 && e.code === "not_found");
  const bad = new G.Channel(url, opts);
  bad.cid = a.cid;
  bad.key = "wrongkey0123456789";
  await assert.rejects(bad.send(a.cid, a.cid, { x: 1 }), (e) => e.status === 403 && e.code === "forbidden");
  await assert.rejects(a.createSession({ tags: ["bad tag!"] }), (e) => e.status === 400 && e.code === "bad_request");
  await assert.rejects(G.listSessions(url, "a,,b"), (e) => e.status === 400);
  await a.close();
});

test("tie-breakers are integers in [0, 2^53) and ufrags are read from SDP", () => {
  for (let i = 0; i < 1000; i++) {
    const t = G.drawTieBreaker();
    assert.ok(Number.isSafeInteger(t) && t >= 0 && t < 2 ** 53);
  }
  assert.equal(G.iceUfragOf("v=0\r\na=ice-ufrag:Fx3b\r\na=ice-pwd:x\r\n"), "Fx3b");
  assert.equal(G.iceUfragOf("v=0\r\n"), null);
});
