#!/usr/bin/env node
// A `glare peer` (CLI.md) inside headless Chromium: the page loads glare.js (and the
// shared runner) from a small static server on 127.0.0.1 — another origin than the
// broker, so the broker's CORS headers are exercised — and prints the same stdout lines.
//
// Extra flags: --mdns on|off (default on: Chromium hides host addresses behind .local
// names; off adds --disable-features=WebRtcHideLocalIpsWithMdns), --fake-media (start
// Chromium with a fake camera/microphone, grant it, and add both tracks to every link
// once connected — a renegotiation over glare-signal; each remote track that plays is
// printed as `playing <REMOTE> <audio|video>`, a harness-only line),
// --chromium PATH (default /usr/bin/chromium), --page index (load index.html instead
// of a blank page, to smoke-test the demo page).

import http from "node:http";
import { readFile, writeFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { parsePeerArgs, iceServers, GLARE_JS } from "./lib/node-cli.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
let mdns = "on";
let fakeMedia = false;
let exe = "/usr/bin/chromium";
let pageName = "blank";
const rest = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--mdns") mdns = argv[++i];
  else if (argv[i] === "--fake-media") fakeMedia = true;
  else if (argv[i] === "--chromium") exe = argv[++i];
  else if (argv[i] === "--page") pageName = argv[++i];
  else rest.push(argv[i]);
}
let opts;
try {
  opts = parsePeerArgs(rest);
  if (!["on", "off"].includes(mdns)) throw new Error("--mdns takes on or off");
} catch (e) {
  process.stderr.write(`peer-chromium: ${e.message}\n`);
  process.exit(2);
}
if (opts.recv) await mkdir(opts.recv, { recursive: true });
const sendBytes = opts.sendPath ? await readFile(opts.sendPath) : null;

const assets = path.dirname(GLARE_JS);
const files = {
  "/glare.js": [GLARE_JS, "text/javascript"],
  "/runner.mjs": [path.join(here, "lib/runner.mjs"), "text/javascript"],
  "/index.html": [path.join(assets, "index.html"), "text/html"],
};
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://x");
    if (req.method === "GET" && files[url.pathname]) {
      const [file, type] = files[url.pathname];
      res.writeHead(200, { "content-type": type, "cache-control": "no-store" });
      res.end(await readFile(file));
    } else if (req.method === "GET" && url.pathname === "/blank.html") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<!doctype html><title>glare harness</title>");
    } else if (req.method === "GET" && url.pathname === "/send-file" && sendBytes) {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.end(sendBytes);
    } else if (req.method === "PUT" && url.pathname === "/recv" && opts.recv) {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const name = path.basename(url.searchParams.get("name") ?? "file").replace(/^\.+/, "_") || "file";
      await writeFile(path.join(opts.recv, name), Buffer.concat(chunks));
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  } catch (e) {
    res.writeHead(500).end(String(e));
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const userDataDir = await mkdtemp(path.join(tmpdir(), "glare-chromium-"));
const args = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
if (mdns === "off") args.push("--disable-features=WebRtcHideLocalIpsWithMdns");
if (fakeMedia) args.push("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream");
const context = await chromium.launchPersistentContext(userDataDir, { executablePath: exe, headless: true, args });
let exiting = false;
const shutdown = async (code) => {
  if (exiting) return;
  exiting = true;
  await context.close().catch(() => {});
  server.close();
  await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  process.exit(code);
};
process.on("SIGTERM", () => shutdown(143));
process.on("SIGINT", () => shutdown(130));

const page = context.pages()[0] ?? (await context.newPage());
page.on("console", (m) => {
  if (m.type() === "error" || process.env.GLARE_CHROMIUM_CONSOLE) process.stderr.write(`peer-chromium console: ${m.text()}\n`);
});
page.on("pageerror", (e) => process.stderr.write(`peer-chromium pageerror: ${e.message}\n`));
await page.exposeFunction("glareOut", (line) => process.stdout.write(line + "\n"));
await page.exposeFunction("glareErr", (line) => process.stderr.write(`peer-chromium: ${line}\n`));
await page.exposeFunction("glareExit", (code) => {
  setTimeout(() => shutdown(code), 0);
});
await page.goto(`${origin}/${pageName === "index" ? "index.html" : "blank.html"}`);

opts.debug = !!process.env.GLARE_DEBUG;
const pageOpts = { ...opts, iceServers: iceServers(opts.ice), send: null, sendPath: undefined, hasSend: !!sendBytes, sendName: opts.sendPath ? path.basename(opts.sendPath) : null };
await page.evaluate(
  async ({ o, fakeMedia }) => {
    const glare = await import("/glare.js");
    const { runPeer } = await import("/runner.mjs");
    if (fakeMedia) {
      // The fake camera and microphone: added to every link once connected (an in-band
      // renegotiation); media permission also makes Chromium signal real host addresses.
      window.glareMedia = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    }
    const playing = new Set();
    const onTrack = (link, e) => {
      const el = document.createElement(e.track.kind === "video" ? "video" : "audio");
      el.muted = true;
      el.autoplay = true;
      el.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      const key = `${link.remote} ${e.track.kind}`;
      const played = () => {
        if (playing.has(key)) return;
        playing.add(key);
        window.glareOut(`playing ${key}`);
      };
      el.addEventListener("playing", played);
      document.body.append(el);
      el.play().catch(() => {});
      // The element's `playing` event can be missed (an element whose stream gains a
      // track after play() started); the receiver decoding frames or samples into an
      // unpaused element is the same fact, read from its statistics.
      const decoded = setInterval(async () => {
        if (playing.has(key)) return clearInterval(decoded);
        const stats = await e.receiver.getStats().catch(() => null);
        stats?.forEach((s) => {
          if (s.type === "inbound-rtp" && !el.paused && ((s.framesDecoded ?? 0) > 0 || (s.totalSamplesReceived ?? 0) > 0)) played();
        });
      }, 500);
      if (o.debug) {
        // What the receiver got, every 5 s (packets, frames decoded, codec).
        const report = async () => {
          const stats = await e.receiver.getStats().catch(() => null);
          const rows = [];
          stats?.forEach((s) => {
            if (s.type === "inbound-rtp") rows.push(`packets=${s.packetsReceived} framesDecoded=${s.framesDecoded ?? "-"} keyFrames=${s.keyFramesDecoded ?? "-"} samples=${s.totalSamplesReceived ?? "-"} codec=${stats.get(s.codecId)?.mimeType}`);
          });
          window.glareErr(`media ${link.remote} ${e.track.kind} mid=${e.transceiver?.mid} ${rows.join(" | ") || "no inbound-rtp"} readyState=${el.readyState} paused=${el.paused}`);
        };
        setInterval(report, 5000);
      }
    };
    if (o.hasSend) {
      const bytes = new Uint8Array(await (await fetch("/send-file")).arrayBuffer());
      o.send = { name: o.sendName, bytes };
    }
    const keep = o.bind ? (c) => c.split(/\s+/)[4] === o.bind : undefined;
    window.glarePeer = await runPeer(o, {
      glare,
      out: (l) => window.glareOut(l),
      err: (l) => window.glareErr(l),
      saveFile: async (name, bytes) => {
        await fetch(`/recv?name=${encodeURIComponent(name)}`, { method: "PUT", body: bytes });
      },
      exit: (code) => window.glareExit(code),
      RTCPeerConnection: window.RTCPeerConnection,
      rtcConfig: { iceServers: o.iceServers },
      candidateFilter: keep,
      mediaStream: window.glareMedia,
      onTrack,
    });
  },
  { o: pageOpts, fakeMedia },
);
