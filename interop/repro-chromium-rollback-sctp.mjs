#!/usr/bin/env node
// Evidence for INTEROP.md (glare~chromium): Chromium alone, no glare. In one page, pc B
// makes an offer with a data channel (its m=application gets mid "0"), then rolls it back
// and answers an offer from pc A — as the polite side of perfect negotiation does in a
// glare race. A's offer is passed on as it is (mid "0"), or with its application mid
// renamed to "c39" (what str0m, and so glare, generates: a random mid). Each case runs
// --runs times (default 20) on fresh connections; prints how many answers Chromium failed.
//
//   node interop/repro-chromium-rollback-sctp.mjs [--runs N] [--chromium PATH]

import http from "node:http";
import { chromium } from "playwright-core";

const argv = process.argv.slice(2);
let runs = 20;
let exe = "/usr/bin/chromium";
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--runs") runs = Number(argv[++i]);
  else if (argv[i] === "--chromium") exe = argv[++i];
}

const server = http.createServer((_, res) => res.end("<!doctype html><title>repro</title>"));
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const browser = await chromium.launch({ executablePath: exe, headless: true, args: ["--no-sandbox", "--headless"] });
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.address().port}/`);

const result = await page.evaluate(async (runs) => {
  const once = async ({ rollback, mid, waitGathering }) => {
    const a = new RTCPeerConnection();
    const b = new RTCPeerConnection();
    try {
      a.createDataChannel("glare-signal");
      b.createDataChannel("glare-signal");
      if (rollback) {
        await b.setLocalDescription(await b.createOffer());
        if (waitGathering) {
          const t = Date.now();
          while (b.iceGatheringState === "new" && Date.now() - t < 1000) await new Promise((r) => setTimeout(r, 10));
        }
        await b.setLocalDescription({ type: "rollback" });
      }
      const offer = await a.createOffer();
      let sdp = offer.sdp;
      if (mid !== "0") sdp = sdp.replace(/a=group:BUNDLE 0/, `a=group:BUNDLE ${mid}`).replace(/a=mid:0/, `a=mid:${mid}`);
      await b.setRemoteDescription({ type: "offer", sdp });
      await b.setLocalDescription(await b.createAnswer());
      return null;
    } catch (e) {
      return e.message;
    } finally {
      a.close();
      b.close();
    }
  };
  const cases = [
    { rollback: false, mid: "0", waitGathering: false },
    { rollback: false, mid: "c39", waitGathering: false },
    { rollback: true, mid: "0", waitGathering: true },
    { rollback: true, mid: "c39", waitGathering: true },
    { rollback: true, mid: "0", waitGathering: false },
    { rollback: true, mid: "c39", waitGathering: false },
  ];
  const out = [];
  for (const c of cases) {
    const errors = [];
    for (let i = 0; i < runs; i++) {
      const e = await once(c);
      if (e) errors.push(e);
    }
    out.push({ ...c, runs, failed: errors.length, error: errors[0] ?? null });
  }
  return out;
}, runs);

console.log(`Chromium ${browser.version()}: answering an offer on pc B (each case ${runs} runs)`);
for (const r of result) {
  console.log(
    `${r.rollback ? `after rolling back its own offer${r.waitGathering ? " (gathering started)" : ""}` : "no own offer"}, remote application mid "${r.mid}": ${r.failed}/${r.runs} failed${r.error ? ` — ${r.error}` : ""}`,
  );
}
await browser.close();
server.close();
