#!/usr/bin/env node
// Drives the demo page (crates/glare-broker/assets/index.html) the way a person would:
// a harness peer (`--tag chat --echo --recv`) joins the broker, headless Chromium opens
// the page, sees the peer's session in the live list, clicks Connect, chats (the peer
// echoes), picks a file to send (the peer saves it; the bytes are compared), and takes
// a screenshot. Runs in its own network namespace, like run-matrix.mjs.
//
//   node page-smoke.mjs [--glare PATH] [--peer "COMMAND"] [--screenshot FILE] [--no-netns]
//
// Prints `page-smoke pass <ms to connect>` and exits 0, or `page-smoke FAIL <why>`, 1.

import http from "node:http";
import { spawn } from "node:child_process";
import { readFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { reexecInNetns } from "./lib/netns.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const args = process.argv.slice(2);
const opt = {
  glare: process.env.GLARE_BIN ?? path.join(root, "target/release/glare"),
  peer: `${process.execPath} ${here}/peer-ndc.mjs`,
  screenshot: path.join(here, "out/page.png"),
  netns: true,
  inside: false,
};
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--glare") opt.glare = args[++i];
  else if (a === "--peer") opt.peer = args[++i];
  else if (a === "--screenshot") opt.screenshot = path.resolve(args[++i]);
  else if (a === "--no-netns") opt.netns = false;
  else if (a === "--inside") opt.inside = true;
  else {
    console.error(`page-smoke: unknown argument ${a}`);
    process.exit(2);
  }
}
if (opt.netns && !opt.inside) process.exit(await reexecInNetns(fileURLToPath(import.meta.url), args, "page"));

const procs = [];
function start(cmdline, extra) {
  const [cmd, ...rest] = cmdline.split(/\s+/);
  const child = spawn(cmd, [...rest, ...extra], { stdio: ["ignore", "pipe", "inherit"] });
  procs.push(child);
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on("line", (l) => {
    lines.push(l);
    for (const w of [...waiters]) if (w.re.test(l)) w.resolve(l);
  });
  return {
    waitFor: (re, ms) =>
      new Promise((resolve, reject) => {
        const hit = lines.find((l) => re.test(l));
        if (hit) return resolve(hit);
        waiters.push({ re, resolve });
        setTimeout(() => reject(new Error(`no ${re} within ${ms} ms`)), ms);
      }),
  };
}

const assets = path.join(root, "crates/glare-broker/assets");
const server = http.createServer(async (req, res) => {
  const name = new URL(req.url, "http://x").pathname === "/glare.js" ? "glare.js" : "index.html";
  res.writeHead(200, { "content-type": name.endsWith(".js") ? "text/javascript" : "text/html" });
  res.end(await readFile(path.join(assets, name)));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));

const work = await mkdtemp(path.join(tmpdir(), "glare-page-"));
const userDataDir = path.join(work, "profile");
let browser = null;
let code = 1;
try {
  const broker = start(`${opt.glare} broker --listen 127.0.0.1:0`, []);
  const url = (await broker.waitFor(/^listening /, 15000)).split(" ")[1];
  const recv = path.join(work, "recv");
  await mkdir(recv, { recursive: true });
  const peer = start(opt.peer, ["--broker", url, "--tag", "chat", "--metadata", '{"name":"harness"}', "--echo", "--recv", recv, "--timeout", "120"]);
  const sid = (await peer.waitFor(/^sid /, 15000)).split(" ")[1];

  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/index.html?broker=${encodeURIComponent(url)}&name=smoke&autostart=1`);
  const row = page.locator(`tr[data-sid="${sid}"] button`);
  await row.waitFor({ timeout: 15000 });
  const t0 = Date.now();
  await row.click();
  await page.locator("#links td", { hasText: "connected" }).first().waitFor({ timeout: 30000 });
  const connectMs = Number(await page.locator("#links tr td:nth-child(3)").first().textContent());
  console.error(`page: connected in ${connectMs} ms (click to connected ${Date.now() - t0} ms)`);
  // The chat channel is opened by the side with the smaller address; wait for it either way.
  await page.waitForFunction(() => document.querySelector("#log").textContent.includes("connected to"), null, { timeout: 10000 });
  await page.waitForTimeout(500);
  await page.fill("#text", "hello from the page");
  await page.click("#chat button");
  await page.locator("#log .them", { hasText: "hello from the page" }).waitFor({ timeout: 10000 });
  const bytes = randomBytes(1 << 20);
  await page.setInputFiles("#pick", { name: "smoke.bin", mimeType: "application/octet-stream", buffer: bytes });
  await page.locator("#files td", { hasText: "⬆ smoke.bin" }).waitFor({ timeout: 30000 });
  await peer.waitFor(/^received smoke\.bin /, 10000);
  const saved = await readFile(path.join(recv, "smoke.bin"));
  if (!saved.equals(bytes)) throw new Error("the peer saved different bytes");
  await page.screenshot({ path: opt.screenshot, fullPage: true });
  console.log(`page-smoke pass ${connectMs}`);
  code = 0;
} catch (e) {
  console.log(`page-smoke FAIL ${e.message}`);
} finally {
  await browser?.close().catch(() => {});
  for (const p of procs) p.kill("SIGTERM");
  server.close();
  await rm(work, { recursive: true, force: true });
}
process.exit(code);
