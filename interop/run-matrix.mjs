#!/usr/bin/env node
// The interop matrix: real peer processes of different WebRTC stacks, through a real
// glare broker, in a network namespace this script creates (so Chromium, which never
// gathers 127.0.0.1, and aiortc, which skips it, have a non-loopback address that is
// not the machine's).
//
//   node run-matrix.mjs [--glare PATH] [--stack NAME=COMMAND]... [--ping-stack NAME]...
//                       [--cells A>B,A~B,...]
//                       [--size BYTES] [--echo N (0: files only)] [--timeout SECS] [--no-netns]
//                       [--md FILE] [--json FILE] [--media-bin PATH]
//
// A cell `A>B` starts B hosting a session (--tag, --send, --recv, --echo), then A dialling
// it (--dial SID, --send, --recv): a file each way (PROTOCOL.md §5), and N messages
// echoed: the side whose stack has the harness-only --ping N sends them (A if it can,
// else B), the other runs with --echo. A cell `A~B` is a glare race: both start with --tag T --dial-tag T
// and must end with exactly one link, one side polite and the other impolite.
// A stack is any command that takes the `glare peer` flags of CLI.md and prints its
// stdout lines (plus --ping N → `echoed N ms=…`), so `glare peer` drops in as
// --stack glare="/path/to/glare peer".
// Media cells: the stack `glare-media` is glare's examples/media.rs (--media-bin PATH, or
// env GLARE_MEDIA_BIN): it sends a generated VP8 + Opus track and counts the frames of the
// tracks it receives. A cell with it on one side and `chromium-media` (fake camera and
// microphone) on the other passes when the Rust side has counted --media-frames frames of
// each kind and Chromium reports both of glare's tracks playing; no files, no echoes.
// Prints a markdown table (pass/fail, ms to connect, Mbit/s each way, echo ms) and
// exits 1 if any cell failed.

import { spawn } from "node:child_process";
import { mkdtemp, mkdir, readFile, writeFile, rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import readline from "node:readline";
import { reexecInNetns } from "./lib/netns.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const node = process.execPath;

const args = process.argv.slice(2);
const opt = {
  glare: process.env.GLARE_BIN ?? path.join(root, "target/release/glare"),
  stacks: {},
  pingStacks: [],
  cells: null,
  size: 4 << 20,
  echo: 1000,
  timeout: 90,
  netns: true,
  md: null,
  json: null,
  inside: false,
  mediaBin: process.env.GLARE_MEDIA_BIN ?? null,
  mediaFrames: 30,
};
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const v = () => args[++i];
  if (a === "--glare") opt.glare = v();
  else if (a === "--stack") {
    const [name, ...cmd] = v().split("=");
    opt.stacks[name] = cmd.join("=");
  } else if (a === "--ping-stack") opt.pingStacks.push(v()); else if (a === "--cells") opt.cells = v().split(",").filter(Boolean);
  else if (a === "--size") opt.size = Number(v());
  else if (a === "--echo") opt.echo = Number(v());
  else if (a === "--timeout") opt.timeout = Number(v());
  else if (a === "--no-netns") opt.netns = false;
  else if (a === "--md") opt.md = path.resolve(v());
  else if (a === "--json") opt.json = path.resolve(v());
  else if (a === "--inside") opt.inside = true;
  else if (a === "--media-bin") opt.mediaBin = path.resolve(v());
  else if (a === "--media-frames") opt.mediaFrames = Number(v());
  else {
    console.error(`run-matrix: unknown argument ${a}`);
    process.exit(2);
  }
}

const py = path.join(here, ".venv/bin/python");
const STACKS = {
  ndc: `${node} ${here}/peer-ndc.mjs`,
  wrtc: `${node} ${here}/peer-wrtc.mjs`,
  werift: `${node} ${here}/peer-werift.mjs`,
  aiortc: `${py} ${here}/peer_aiortc.py`,
  chromium: `${node} ${here}/peer-chromium.mjs --mdns off`,
  "chromium-mdns": `${node} ${here}/peer-chromium.mjs --mdns on`,
  "chromium-media": `${node} ${here}/peer-chromium.mjs --mdns on --fake-media`,
  ...(opt.mediaBin ? { "glare-media": opt.mediaBin } : {}),
  ...opt.stacks,
};
// Stacks that are glare's media example (examples/media.rs), not a `glare peer`.
const RUST_MEDIA = new Set(["glare-media"]);
// Stacks whose command takes the harness-only --ping N (every harness here does;
// `glare peer` does not, unless named with --ping-stack).
const PINGS = new Set(["ndc", "wrtc", "werift", "aiortc", "chromium", "chromium-mdns", "chromium-media", ...opt.pingStacks]);
// Stacks that add a fake camera and microphone to every link and print `playing …`.
const MEDIA = new Set(["chromium-media"]);
const DEFAULT_CELLS = [
  "ndc>wrtc",
  "wrtc>ndc",
  "ndc~wrtc",
  "chromium>ndc",
  "ndc>chromium",
  "chromium-mdns>ndc",
  "ndc>chromium-mdns",
  "chromium>chromium",
  "chromium~chromium",
  "aiortc>wrtc",
  "wrtc>aiortc",
  "aiortc~wrtc",
];
const cells = opt.cells ?? DEFAULT_CELLS;

if (opt.netns && !opt.inside) process.exit(await reexecInNetns(fileURLToPath(import.meta.url), args, "interop"));

function splitCmd(cmd) {
  return cmd.match(/"[^"]*"|\S+/g).map((s) => s.replace(/^"|"$/g, ""));
}

/** Spawns a process and collects its stdout lines; `waitFor(re)` resolves on a match. */
function launch(label, cmdline, extra, logs) {
  const [cmd, ...rest] = splitCmd(cmdline);
  const child = spawn(cmd, [...rest, ...extra], { stdio: ["ignore", "pipe", "pipe"] });
  const lines = [];
  const waiters = [];
  const rl = readline.createInterface({ input: child.stdout });
  rl.on("line", (line) => {
    lines.push(line);
    logs.push(`${label} > ${line}`);
    for (const w of [...waiters]) {
      const m = w.re.exec(line);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  });
  readline.createInterface({ input: child.stderr }).on("line", (l) => logs.push(`${label} ! ${l}`));
  const exited = new Promise((r) => child.on("exit", (code, sig) => r(code ?? (sig ? `signal ${sig}` : 1))));
  return {
    child,
    lines,
    exited,
    waitFor(re, ms) {
      const hit = lines.map((l) => re.exec(l)).find(Boolean);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const w = { re, resolve };
        waiters.push(w);
        setTimeout(() => reject(new Error(`${label}: no ${re} within ${ms} ms`)), ms);
        exited.then((c) => reject(new Error(`${label} exited (${c}) before ${re}`)));
      });
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    },
  };
}

async function startBroker(logs) {
  const b = launch("broker", `${opt.glare} broker --listen 127.0.0.1:0`, [], logs);
  const m = await b.waitFor(/^listening (http:\/\/\S+)/, 15000);
  return { proc: b, url: m[1] };
}

function parse(lines) {
  const get = (re) => lines.map((l) => re.exec(l)).filter(Boolean);
  return {
    connected: get(/^connected (\S+) role=(\S+) ms=(\d+)/).map((m) => ({ remote: m[1], role: m[2], ms: Number(m[3]) })),
    sent: get(/^sent (\S+) (\d+) ([0-9a-f]{64}) mbps=([\d.]+)/).map((m) => ({ name: m[1], size: Number(m[2]), sha: m[3], mbps: Number(m[4]) })),
    received: get(/^received (\S+) (\d+) ([0-9a-f]{64}) mbps=([\d.]+)/).map((m) => ({ name: m[1], size: Number(m[2]), sha: m[3], mbps: Number(m[4]) })),
    echoed: get(/^echoed (\d+) ms=(\d+)/).map((m) => ({ n: Number(m[1]), ms: Number(m[2]) })),
  };
}

async function runCell(cell, broker, work, index) {
  const race = cell.includes("~");
  const [a, b] = cell.split(/[>~]/);
  const logs = [];
  const result = { cell, a, b, kind: race ? "race" : "dial", pass: false, why: "" };
  if (!STACKS[a] || !STACKS[b]) {
    result.why = `unknown stack ${STACKS[a] ? b : a}${a === "glare-media" || b === "glare-media" ? " (needs --media-bin)" : ""}`;
    return { result, logs };
  }
  if (RUST_MEDIA.has(a) || RUST_MEDIA.has(b)) return runMediaCell(cell, a, b, race, broker, index, result, logs);
  const fileA = path.join(work, `a-${index}.bin`);
  const fileB = path.join(work, `b-${index}.bin`);
  const dataA = randomBytes(opt.size);
  const dataB = randomBytes(opt.size);
  await writeFile(fileA, dataA);
  await writeFile(fileB, dataB);
  const dirA = path.join(work, `recv-a-${index}`);
  const dirB = path.join(work, `recv-b-${index}`);
  await mkdir(dirA, { recursive: true });
  await mkdir(dirB, { recursive: true });
  const tag = `cell${index}`;
  const common = ["--broker", broker.url, "--timeout", String(opt.timeout)];
  let pa;
  let pb;
  try {
    // The pinger (the harness-only --ping) is A when A's stack has it, else B.
    const pinger = opt.echo === 0 ? null : PINGS.has(a) ? "A" : PINGS.has(b) ? "B" : null;
    const role = (me) => (pinger === me ? ["--ping", String(opt.echo), "--count", "3"] : pinger ? ["--echo", "--count", "2"] : ["--count", "2"]);
    const bArgs = [...common, "--tag", tag, "--send", fileB, "--recv", dirB, ...role("B")];
    const aArgs = [...common, "--send", fileA, "--recv", dirA, ...role("A")];
    result.pinger = pinger;
    if (race) {
      bArgs.push("--dial-tag", tag);
      aArgs.push("--tag", tag, "--dial-tag", tag);
      pb = launch(`B:${b}`, STACKS[b], bArgs, logs);
      pa = launch(`A:${a}`, STACKS[a], aArgs, logs);
    } else {
      pb = launch(`B:${b}`, STACKS[b], bArgs, logs);
      const sid = (await pb.waitFor(/^sid (\S+)/, 30000))[1];
      pa = launch(`A:${a}`, STACKS[a], [...aArgs, "--dial", sid], logs);
    }
    // If one side fails, the other cannot finish: end it after 3 s instead of its timeout.
    for (const [me, other] of [[pa, pb], [pb, pa]]) {
      me.exited.then((c) => c !== 0 && setTimeout(() => other.kill(), 3000));
    }
    const [ca, cb] = await Promise.all([pa.exited, pb.exited]);
    const A = parse(pa.lines);
    const B = parse(pb.lines);
    result.connectMs = [A.connected[0]?.ms, B.connected[0]?.ms];
    result.roles = [A.connected[0]?.role, B.connected[0]?.role];
    result.mbpsAB = A.sent[0]?.mbps;
    result.mbpsBA = B.sent[0]?.mbps;
    const P = pinger === "B" ? B : A;
    result.echoMs = P.echoed[0]?.ms;
    const problems = [];
    if (ca !== 0) problems.push(`${a} exited ${ca}`);
    if (cb !== 0) problems.push(`${b} exited ${cb}`);
    if (A.connected.length !== 1 || B.connected.length !== 1) problems.push(`links: ${A.connected.length}/${B.connected.length} (want 1/1)`);
    if (result.roles[0] && result.roles[0] === result.roles[1]) problems.push(`both ${result.roles[0]}`);
    const gotA = await readFile(path.join(dirA, path.basename(fileB))).catch(() => null);
    const gotB = await readFile(path.join(dirB, path.basename(fileA))).catch(() => null);
    if (!gotA || !gotA.equals(dataB)) problems.push(`${a} did not save B's file intact`);
    if (!gotB || !gotB.equals(dataA)) problems.push(`${b} did not save A's file intact`);
    // Media: each side that receives the other's tracks must see them play.
    for (const [me, other, lines] of [[a, b, pa.lines], [b, a, pb.lines]]) {
      if (!MEDIA.has(other)) continue;
      const kinds = lines.filter((l) => l.startsWith("playing ")).map((l) => l.split(" ")[2]);
      if (me.startsWith("chromium")) {
        if (!kinds.includes("video") || !kinds.includes("audio")) problems.push(`${me} did not play ${other}'s tracks (${kinds.join(",") || "none"})`);
      }
    }
    if (opt.echo === 0) {
      /* --echo 0: files only */
    } else if (!pinger) {
      // Said in the table, not counted as an echo run.
      result.note = "files only: neither side has --ping (`glare peer` has no --ping yet)";
    } else if (P.echoed[0]?.n !== opt.echo) problems.push("no echo run");
    result.pass = problems.length === 0;
    result.why = problems.join("; ");
  } catch (e) {
    result.why = e.message;
  } finally {
    pa?.kill();
    pb?.kill();
    await Promise.race([Promise.all([pa?.exited, pb?.exited]), new Promise((r) => setTimeout(r, 5000))]);
  }
  return { result, logs };
}

/**
 * A media cell: glare's media example against `chromium-media`. B hosts, A dials. The Rust
 * side must count --media-frames frames of audio and of video, Chromium must report both
 * of the Rust side's tracks playing; then both are stopped (SIGTERM).
 */
async function runMediaCell(cell, a, b, race, broker, index, result, logs) {
  result.kind = "media";
  const rust = RUST_MEDIA.has(a) ? "A" : "B";
  const other = rust === "A" ? b : a;
  if (race || RUST_MEDIA.has(other) || !MEDIA.has(other)) {
    result.why = "media cells are `glare-media>chromium-media` or `chromium-media>glare-media`";
    return { result, logs };
  }
  const tag = `cell${index}`;
  const limit = opt.timeout * 1000;
  const argsFor = (me) =>
    me === rust
      ? ["--broker", broker.url, "--tag", tag, "--seconds", String(opt.timeout), "--expect", String(opt.mediaFrames)]
      : ["--broker", broker.url, "--tag", tag, "--timeout", String(opt.timeout)];
  let pa;
  let pb;
  try {
    pb = launch(`B:${b}`, STACKS[b], argsFor("B"), logs);
    const sid = (await pb.waitFor(/^sid (\S+)/, 30000))[1];
    pa = launch(`A:${a}`, STACKS[a], [...argsFor("A"), "--dial", sid], logs);
    const R = rust === "A" ? pa : pb;
    const C = rust === "A" ? pb : pa;
    const started = Date.now();
    const left = () => Math.max(1, limit - (Date.now() - started));
    await Promise.all([
      R.waitFor(/^frames video \d+/, left()),
      R.waitFor(/^frames audio \d+/, left()),
      C.waitFor(/^playing \S+ video/, left()),
      C.waitFor(/^playing \S+ audio/, left()),
    ]);
    result.mediaMs = Date.now() - started;
    const A = parse(pa.lines);
    const B = parse(pb.lines);
    result.connectMs = [A.connected[0]?.ms, B.connected[0]?.ms];
    result.roles = [A.connected[0]?.role, B.connected[0]?.role];
    const problems = [];
    if (A.connected.length !== 1 || B.connected.length !== 1) problems.push(`links: ${A.connected.length}/${B.connected.length} (want 1/1)`);
    if (result.roles[0] && result.roles[0] === result.roles[1]) problems.push(`both ${result.roles[0]}`);
    result.pass = problems.length === 0;
    result.why = problems.join("; ");
    result.note = `glare counted ${opt.mediaFrames} VP8 + ${opt.mediaFrames} Opus frames, Chromium played glare's video + audio, in ${result.mediaMs} ms`;
  } catch (e) {
    result.why = e.message;
  } finally {
    pa?.kill();
    pb?.kill();
    await Promise.race([Promise.all([pa?.exited, pb?.exited]), new Promise((r) => setTimeout(r, 5000))]);
    const R = rust === "A" ? pa : pb;
    const total = R?.lines.find((l) => l.startsWith("total "));
    if (total) result.note = `${result.note ?? ""}${result.note ? "; " : ""}glare ${total}`;
  }
  return { result, logs };
}

function table(results) {
  const fmt = (v) => (v === undefined || v === null ? "–" : String(v));
  const rows = [
    `| cell | dialler (A) | dialled (B) | result | connect ms A/B | roles A/B | A→B Mbit/s | B→A Mbit/s | ${opt.echo} echoes ms (pinger) |`,
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of results) {
    const who = r.kind;
    rows.push(
      `| ${r.cell} (${who}) | ${r.a} | ${r.b} | ${r.pass ? "pass" : "FAIL: " + r.why}${r.note ? ` (${r.note})` : ""} | ${fmt(r.connectMs?.[0])}/${fmt(r.connectMs?.[1])} | ${fmt(r.roles?.[0])}/${fmt(r.roles?.[1])} | ${fmt(r.mbpsAB)} | ${fmt(r.mbpsBA)} | ${r.pinger ? `${fmt(r.echoMs)} (${r.pinger})` : r.kind === "media" ? "–" : "n/a"} |`,
    );
  }
  return rows.join("\n");
}

const work = await mkdtemp(path.join(tmpdir(), "glare-matrix-"));
const brokerLogs = [];
const broker = await startBroker(brokerLogs);
const results = [];
let index = 0;
for (const cell of cells) {
  const t = Date.now();
  const { result, logs } = await runCell(cell, broker, work, index++);
  results.push(result);
  console.error(`${result.pass ? "pass" : "FAIL"} ${cell} in ${Date.now() - t} ms ${result.why}`);
  if (!result.pass || process.env.GLARE_MATRIX_VERBOSE) for (const l of logs) console.error(`    ${l}`);
}
broker.proc.kill();
if (process.env.GLARE_MATRIX_KEEP) console.error(`kept ${work}`);
else await rm(work, { recursive: true, force: true });
const md = table(results);
console.log(md);
console.log(`${results.filter((r) => r.pass).length} passed, ${results.filter((r) => !r.pass).length} failed`);
if (opt.md) await writeFile(opt.md, md + "\n");
if (opt.json) await writeFile(opt.json, results.map((r) => JSON.stringify(r)).join("\n") + "\n");
process.exit(results.every((r) => r.pass) ? 0 : 1);
