// Runs this script again inside a network namespace it creates and deletes: loopback
// plus a veth pair with both ends inside (10.99.0.1/24, 10.99.0.2/24) and a default
// route onto it. Chromium gathers host candidates only on the default route's
// interface and never on 127.0.0.1, aiortc skips 127.0.0.1: this gives every stack a
// non-loopback address that is not the machine's, and nothing inside can reach any
// other host (both veth ends are in the namespace).

import { spawn, execFileSync } from "node:child_process";

export async function reexecInNetns(scriptPath, args, tag) {
  const ns = `glare-${tag}-${process.pid}`;
  const ip = (...a) => execFileSync("ip", a, { stdio: ["ignore", "ignore", "inherit"] });
  let code = 1;
  try {
    ip("netns", "add", ns);
    ip("-n", ns, "link", "set", "lo", "up");
    ip("-n", ns, "link", "add", "gi0", "type", "veth", "peer", "name", "gi1");
    ip("-n", ns, "addr", "add", "10.99.0.1/24", "dev", "gi0");
    ip("-n", ns, "addr", "add", "10.99.0.2/24", "dev", "gi1");
    ip("-n", ns, "link", "set", "gi0", "up");
    ip("-n", ns, "link", "set", "gi1", "up");
    ip("-n", ns, "route", "add", "default", "dev", "gi0");
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, scriptPath, ...args, "--inside"], { stdio: "inherit" });
    const forward = (sig) => child.kill(sig);
    process.on("SIGINT", forward);
    process.on("SIGTERM", forward);
    code = await new Promise((r) => child.on("exit", (c, s) => r(c ?? (s ? 1 : 0))));
  } finally {
    try {
      ip("netns", "del", ns);
    } catch {
      /* already gone */
    }
  }
  return code;
}
