// Command line of a Node harness peer: the `glare peer` flags of CLI.md (the subset
// --broker --tag --metadata --unlisted --dial --dial-tag --send --recv --echo --count
// --timeout --bind --ice) plus the harness-only --ping N (send N small messages on a
// `glare-echo` channel to a peer started with --echo, check them, print
// `echoed N ms=…`; counts as one completion for --count).

import { readFile, writeFile, mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { EventSource } from "./eventsource.mjs";
import { runPeer } from "./runner.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const GLARE_JS = path.resolve(here, "../../crates/glare-broker/assets/glare.js");

export function parsePeerArgs(argv) {
  const o = { tags: [], dial: [], dialTag: [], send: null, recv: null, echo: false, ping: 0, count: 0, timeoutSecs: 0, bind: null, ice: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case "--broker": o.broker = val(); break;
      case "--tag": o.tags.push(val()); break;
      case "--metadata": o.metadata = JSON.parse(val()); break;
      case "--unlisted": o.unlisted = true; break;
      case "--dial": o.dial.push(val()); break;
      case "--dial-tag": o.dialTag.push(val()); break;
      case "--send": o.sendPath = val(); break;
      case "--recv": o.recv = val(); break;
      case "--echo": o.echo = true; break;
      case "--ping": o.ping = Number(val()); break;
      case "--count": o.count = Number(val()); break;
      case "--timeout": o.timeoutSecs = Number(val()); break;
      case "--bind": o.bind = val(); break;
      case "--ice": o.ice.push(val()); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.broker) throw new Error("--broker URL is required");
  return o;
}

/**
 * CLI.md's `--ice` URLs (`stun:HOST:PORT`, `turn:USER:PASS@HOST:PORT[?transport=tcp]`,
 * `turns:…`) as W3C RTCIceServer objects, the credentials taken out of the URL.
 */
export function iceServers(urls) {
  return urls.map((u) => {
    const m = /^(turns?):([^:@]+):([^@]+)@(.+)$/.exec(u);
    return m ? { urls: `${m[1]}:${m[4]}`, username: m[2], credential: m[3] } : { urls: u };
  });
}

/** Keeps only candidates on `bind` (when given): the --bind of CLI.md for stacks that cannot bind. */
export function bindFilter(bind) {
  if (!bind) return undefined;
  return (cand) => {
    const parts = cand.split(/\s+/);
    return parts[4] === bind;
  };
}

/**
 * Runs a peer with the given W3C RTCPeerConnection class. `makeConfig(opts)` builds the
 * RTCPeerConnection configuration; `extra` may set tieBreaker or onExit.
 */
export async function main(stackName, RTCPeerConnection, makeConfig = (o) => ({ iceServers: iceServers(o.ice) }), extra = {}) {
  let opts;
  try {
    opts = parsePeerArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${stackName}: ${e.message}\n`);
    process.exit(2);
  }
  if (opts.sendPath) opts.send = { name: path.basename(opts.sendPath), bytes: new Uint8Array(await readFile(opts.sendPath)) };
  opts.debug = !!process.env.GLARE_DEBUG;
  if (opts.recv) await mkdir(opts.recv, { recursive: true });
  const glare = await import(GLARE_JS);
  await runPeer(opts, {
    glare,
    out: (line) => process.stdout.write(line + "\n"),
    err: (line) => process.stderr.write(`${stackName}: ${line}\n`),
    saveFile: async (name, bytes) => {
      const safe = path.basename(name).replace(/^\.+/, "_") || "file";
      await writeFile(path.join(opts.recv, safe), bytes);
    },
    exit: (code) => {
      extra.onExit?.();
      process.exit(code);
    },
    RTCPeerConnection,
    rtcConfig: makeConfig(opts),
    EventSource,
    tieBreaker: extra.tieBreaker,
    freshPcOnFirstGlare: extra.freshPcOnFirstGlare,
    connectBackstopMs: extra.connectBackstopMs,
    candidateFilter: bindFilter(opts.bind),
  });
}
