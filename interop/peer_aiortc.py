#!/usr/bin/env python3
"""A `glare peer` (CLI.md) on aiortc, speaking PROTOCOL.md through the broker.

aiortc cannot roll back, so this peer is impolite-only: its tie-breaker is always
2^53 - 1, the largest allowed, which the protocol permits (any number in [0, 2^53)).
It does not trickle: its candidates are in its SDP, followed by end-of-candidates.
Flags: the `glare peer` subset --broker --tag --metadata --unlisted --dial --dial-tag
--send --recv --echo --count --timeout --bind, plus the harness-only --ping N.
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
import urllib.parse

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

TB_MAX = 2**53 - 1
SIGNAL_LABEL, SIGNAL_PROTOCOL, FILE_LABEL, ECHO_LABEL = "glare-signal", "glare/1", "glare-file", "glare-echo"
CHUNK = 16384


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line):
    sys.stderr.write(f"peer-aiortc: {line}\n")
    sys.stderr.flush()


def ufrag_of(sdp):
    m = re.search(r"^a=ice-ufrag:(\S+)", sdp or "", re.M)
    return m.group(1) if m else None


async def sse_events(resp):
    """Yields (event, data, id) from an SSE response."""
    etype, data, eid = "", [], ""
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield (etype or "message", "\n".join(data), eid)
            etype, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            etype = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value


class Broker:
    def __init__(self, base, http):
        self.base = base.rstrip("/")
        self.http = http
        self.cid = self.key = None
        self.last_id = 0
        self.on_message = None
        self.closed = False
        self._opened = asyncio.get_running_loop().create_future()

    async def post(self, path, body):
        for attempt in range(6):
            async with self.http.post(self.base + path, data=json.dumps(body), headers={"content-type": "text/plain"}) as r:
                text = await r.text()
                if r.status < 300:
                    return json.loads(text) if text else None
                if r.status == 429 and attempt < 5:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                raise RuntimeError(f"{path}: {r.status} {text}")

    async def run(self):
        lost_since = None
        while not self.closed:
            url = self.base + "/channel"
            if self.cid:
                url += "?" + urllib.parse.urlencode({"cid": self.cid, "key": self.key, "lastEventId": self.last_id})
            try:
                async with self.http.get(url, headers={"accept": "text/event-stream"}, timeout=aiohttp.ClientTimeout(total=None)) as r:
                    if r.status != 200:
                        raise RuntimeError(f"channel: {r.status}")
                    async for ev, data, eid in sse_events(r):
                        if ev == "channel":
                            d = json.loads(data)
                            self.cid, self.key = d["cid"], d["key"]
                            lost_since = None
                            if not self._opened.done():
                                self._opened.set_result(None)
                        elif ev == "message":
                            i = int(eid) if eid.isdigit() else 0
                            if i and i <= self.last_id:
                                continue
                            self.last_id = max(self.last_id, i)
                            if self.on_message:
                                self.on_message(json.loads(data))
                        elif ev == "gap":
                            err(f"broker gap {data}")
            except Exception as e:  # noqa: BLE001 - any stream failure means resume
                if not self._opened.done():
                    self._opened.set_exception(e)
                    return
            if self.closed:
                return
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 25:
                err("broker channel lost")
                return
            await asyncio.sleep(0.25)

    async def send(self, origin, target, message):
        await self.post(f"/send/{target}", {"origin": origin, "key": self.key, "message": message})

    async def close(self):
        self.closed = True
        if self.cid:
            try:
                await self.post("/channel/close", {"cid": self.cid, "key": self.key})
            except Exception:  # noqa: BLE001 - closing anyway
                pass


class Link:
    def __init__(self, app, local, remote):
        self.app, self.local, self.remote = app, local, remote
        self.pc = None
        self.tb = TB_MAX
        self.remote_tb = None
        self.signal = []
        self.ignored = set()
        self.known = set()
        self.held = []
        self.t0 = None
        self.connected = False
        self.closed = False
        self.lock = asyncio.Lock()

    def mark(self):
        if self.t0 is None:
            self.t0 = time.monotonic()

    def new_pc(self):
        # No ICE servers: aiortc's default configuration would try a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.signal = []
        self.pc.on("datachannel", self.route)

        @self.pc.on("connectionstatechange")
        async def _():
            if self.pc and self.pc.connectionState == "failed":
                await self.close("connection failed", True)

    def route(self, dc):
        if dc.label == SIGNAL_LABEL:
            self.signal.append(dc)
            dc.on("message", lambda m: self.on_signal(m))
            if dc.readyState == "open":
                self.on_open(dc)
            else:
                dc.on("open", lambda: self.on_open(dc))
            return
        self.app.on_channel(self, dc)

    def on_open(self, dc):
        if self.connected or self.closed:
            return
        self.connected = True
        ms = round((time.monotonic() - (self.t0 or time.monotonic())) * 1000)
        role = "unknown" if self.remote_tb is None else ("polite" if self.tb < self.remote_tb else "impolite")
        out(f"connected {self.remote} role={role} ms={ms}")
        self.app.on_connected(self)

    def on_signal(self, m):
        if isinstance(m, str):
            try:
                self.handle(json.loads(m))
            except ValueError:
                pass

    def signal_dc(self):
        opened = [d for d in self.signal if d.readyState == "open"]
        return min(opened, key=lambda d: d.id if d.id is not None else 65535) if opened else None

    async def send(self, msg):
        self.mark()
        dc = self.signal_dc()
        if dc:
            dc.send(json.dumps(msg))
            return
        try:
            await self.app.broker.send(self.local, self.remote, msg)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            if not self.closed:
                err(f"send to {self.remote}: {e}")

    async def send_description(self):
        d = self.pc.localDescription
        await self.send({"description": {"type": d.type, "sdp": d.sdp}, "tieBreaker": self.tb})
        # aiortc gathers before it returns: every candidate is in the SDP.
        await self.send({"candidate": {"candidate": "", "usernameFragment": ufrag_of(d.sdp)}})

    async def start(self):
        self.mark()
        async with self.lock:
            if self.pc:
                return
            self.new_pc()
            self.route(self.pc.createDataChannel(SIGNAL_LABEL, ordered=True, protocol=SIGNAL_PROTOCOL))
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self.send_description()

    def handle(self, msg):
        if self.closed or not isinstance(msg, dict):
            return
        if "bye" in msg:
            reason = (msg.get("bye") or {}).get("reason")
            asyncio.ensure_future(self.close("bye" + (f": {reason}" if reason else ""), False))
            return
        self.mark()
        asyncio.ensure_future(self._handle(msg))

    async def _handle(self, msg):
        async with self.lock:
            try:
                if "description" in msg:
                    await self.on_description(msg["description"], msg.get("tieBreaker"))
                elif "candidate" in msg:
                    await self.on_candidate(msg["candidate"])
            except Exception as e:  # noqa: BLE001 - a bad signal is reported, not fatal
                err(f"signal from {self.remote}: {e!r}")

    async def on_description(self, d, tb):
        if isinstance(tb, int) and 0 <= tb < 2**53:
            self.remote_tb = tb
        ufrag = ufrag_of(d.get("sdp"))
        if d.get("type") == "offer":
            if self.pc and self.pc.signalingState != "stable":
                # Glare. This side is impolite by construction: ignore the offer and
                # its candidates, and wait for the answer to ours.
                self.ignored.add(ufrag)
                return
            if not self.pc:
                self.new_pc()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type="offer"))
            self.known.add(ufrag)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.send_description()
            await self.flush()
        elif d.get("type") == "answer":
            if not self.pc or self.pc.signalingState != "have-local-offer":
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type="answer"))
            self.known.add(ufrag)
            await self.flush()

    async def on_candidate(self, c):
        if not isinstance(c, dict) or not isinstance(c.get("candidate"), str):
            return
        uf = c.get("usernameFragment")
        if uf in self.ignored:
            return
        current = ufrag_of(self.pc.remoteDescription.sdp) if self.pc and self.pc.remoteDescription else None
        if not current or (uf and uf != current):
            if uf in self.known:
                return
            if len(self.held) < 256:
                self.held.append(c)
            return
        await self.apply(c)

    async def apply(self, c):
        s = c["candidate"]
        if s == "":
            await self.pc.addIceCandidate(None)
            return
        if s.startswith("candidate:"):
            s = s[len("candidate:"):]
        cand = candidate_from_sdp(s)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        if cand.sdpMid is None and cand.sdpMLineIndex is None:
            cand.sdpMLineIndex = 0
        await self.pc.addIceCandidate(cand)

    async def flush(self):
        current = ufrag_of(self.pc.remoteDescription.sdp)
        held, self.held = self.held, []
        for c in held:
            uf = c.get("usernameFragment")
            if not uf or uf == current:
                await self.apply(c)
            elif uf not in self.known and uf not in self.ignored:
                self.held.append(c)

    async def close(self, reason, say_bye):
        if self.closed:
            return
        if say_bye:
            msg = {"bye": {"reason": reason}}
            dc = self.signal_dc()
            if dc:
                dc.send(json.dumps(msg))
            try:
                await self.app.broker.send(self.local, self.remote, msg)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.closed = True
        out(f"closed {self.remote} {reason}")
        if self.pc:
            await self.pc.close()
        self.app.links.pop(self.remote, None)


async def wait_low(dc, high):
    while dc.bufferedAmount > high:
        if dc.readyState != "open":
            raise RuntimeError("file channel closed while sending")
        await asyncio.sleep(0.002)


class App:
    def __init__(self, args, http):
        self.args = args
        self.broker = Broker(args.broker, http)
        self.http = http
        self.links = {}
        self.sid = None
        self.done = 0
        self.finished = asyncio.get_running_loop().create_future()
        self.receiver_closes = []
        self.remote_channels = []

    def link(self, local, remote):
        if remote not in self.links:
            self.links[remote] = Link(self, local, remote)
        return self.links[remote]

    def on_broker(self, ev):
        origin, target, msg = ev.get("origin"), ev.get("target"), ev.get("message")
        if not isinstance(origin, str) or not isinstance(msg, dict):
            return
        if origin not in self.links:
            if not ((msg.get("description") or {}).get("type") == "offer" or "candidate" in msg):
                return
        self.link(target, origin).handle(msg)

    def complete(self):
        self.done += 1
        if self.args.count and self.done >= self.args.count and not self.finished.done():
            self.finished.set_result(0)

    def fail(self, why):
        err(why)
        if not self.finished.done():
            self.finished.set_result(1)

    def on_connected(self, link):
        if self.args.send:
            asyncio.ensure_future(self.send_file(link))
        if self.args.ping:
            asyncio.ensure_future(self.ping(link))

    def on_channel(self, link, dc):
        if dc.label == FILE_LABEL:
            if self.args.recv:
                self.recv_file(dc)
            else:
                dc.close()
        elif self.args.echo:
            dc.on("message", lambda m: dc.send(m))
            # Keep the link up while the remote still uses the echo channel.
            closed = asyncio.get_running_loop().create_future()
            dc.on("close", lambda: closed.done() or closed.set_result(None))
            self.remote_channels.append(closed)

    async def send_file(self, link):
        try:
            path = self.args.send
            with open(path, "rb") as f:
                data = f.read()
            name, sha = os.path.basename(path), hashlib.sha256(data).hexdigest()
            dc = link.pc.createDataChannel(FILE_LABEL, ordered=True)
            opened, ack = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
            dc.on("open", lambda: opened.done() or opened.set_result(None))
            dc.on("message", lambda m: isinstance(m, str) and not ack.done() and ack.set_result(json.loads(m)))
            await asyncio.wait_for(opened, 30)
            t = time.monotonic()
            dc.send(json.dumps({"name": name, "size": len(data), "sha256": sha}))
            for off in range(0, len(data), CHUNK):
                await wait_low(dc, 1 << 20)
                dc.send(data[off:off + CHUNK])
            a = await asyncio.wait_for(ack, 300)
            ms = max(0.001, time.monotonic() - t) * 1000
            dc.close()
            if not a.get("ok") or a.get("sha256") != sha:
                raise RuntimeError(f"receiver answered {a}")
            out(f"sent {name} {len(data)} {sha} mbps={len(data) * 8 / (ms * 1000):.1f}")
            self.complete()
        except Exception as e:  # noqa: BLE001 - fatal for this run
            self.fail(f"send to {link.remote}: {e!r}")

    def recv_file(self, dc):
        st = {"header": None, "h": hashlib.sha256(), "got": 0, "parts": [], "t": 0}
        closed = asyncio.get_running_loop().create_future()
        self.receiver_closes.append(closed)
        dc.on("close", lambda: closed.done() or closed.set_result(None))

        def on_message(m):
            if st["header"] is None:
                try:
                    st["header"] = json.loads(m)
                except (TypeError, ValueError):
                    return self.fail("bad file header")
                st["t"] = time.monotonic()
                if st["header"].get("size") == 0:
                    finish()
                return
            if isinstance(m, str):
                return
            st["h"].update(m)
            st["parts"].append(m)
            st["got"] += len(m)
            if st["got"] >= st["header"]["size"]:
                finish()

        def finish():
            h = st["header"]
            sha = st["h"].hexdigest()
            ok = st["got"] == h["size"] and sha == str(h.get("sha256", "")).lower()
            dc.send(json.dumps({"ok": True, "sha256": sha} if ok else {"ok": False, "error": "sha256 or size mismatch"}))
            asyncio.get_running_loop().call_later(3, lambda: closed.done() or closed.set_result(None))
            if not ok:
                return self.fail(f"{h['name']}: mismatch")
            name = os.path.basename(h["name"]).lstrip(".") or "file"
            with open(os.path.join(self.args.recv, name), "wb") as f:
                f.write(b"".join(st["parts"]))
            ms = max(0.001, time.monotonic() - st["t"]) * 1000
            out(f"received {h['name']} {st['got']} {sha} mbps={st['got'] * 8 / (ms * 1000):.1f}")
            self.complete()

        dc.on("message", on_message)

    async def ping(self, link):
        try:
            n = self.args.ping
            dc = link.pc.createDataChannel(ECHO_LABEL, ordered=True)
            opened, done = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
            dc.on("open", lambda: opened.done() or opened.set_result(None))
            st = {"back": 0}
            pad = "x" * 32

            def on_message(m):
                if m != f"ping {st['back']} {pad}":
                    if not done.done():
                        done.set_exception(RuntimeError(f"echo {st['back']}: got {str(m)[:40]}"))
                    return
                st["back"] += 1
                if st["back"] == n and not done.done():
                    done.set_result(None)

            dc.on("message", on_message)
            await asyncio.wait_for(opened, 30)
            t = time.monotonic()
            for i in range(n):
                dc.send(f"ping {i} {pad}")
                if i % 64 == 63:
                    await asyncio.sleep(0)
            await asyncio.wait_for(done, 120)
            dc.close()
            out(f"echoed {n} ms={round((time.monotonic() - t) * 1000)}")
            self.complete()
        except Exception as e:  # noqa: BLE001 - fatal for this run
            self.fail(f"echo with {link.remote}: {e!r}")

    async def watch(self, tag):
        url = f"{self.broker.base}/list?filter={urllib.parse.quote(tag)}"
        while not self.finished.done():
            try:
                async with self.http.get(url, headers={"accept": "text/event-stream"}, timeout=aiohttp.ClientTimeout(total=None)) as r:
                    async for ev, data, _ in sse_events(r):
                        if ev == "add":
                            sid = json.loads(data)["sid"]
                            if sid != self.sid and sid not in self.links:
                                asyncio.ensure_future(self.link(self.sid, sid).start())
            except Exception:  # noqa: BLE001 - reopen
                pass
            await asyncio.sleep(0.5)

    async def main(self):
        self.broker.on_message = self.on_broker
        runner = asyncio.ensure_future(self.broker.run())
        await self.broker._opened
        body = {"cid": self.broker.cid, "key": self.broker.key, "tags": self.args.tag, "list": not self.args.unlisted}
        if self.args.metadata:
            body["metadata"] = json.loads(self.args.metadata)
        self.sid = (await self.broker.post("/session", body))["sid"]
        out(f"sid {self.sid}")
        for sid in self.args.dial:
            asyncio.ensure_future(self.link(self.sid, sid).start())
        watchers = [asyncio.ensure_future(self.watch(t)) for t in self.args.dial_tag]
        try:
            code = await asyncio.wait_for(self.finished, self.args.timeout or None)
        except asyncio.TimeoutError:
            err(f"timeout: not done after {self.args.timeout} s ({self.done} of {self.args.count} done)")
            code = 1
        if code == 0 and self.receiver_closes:
            await asyncio.wait(self.receiver_closes, timeout=3)
        if code == 0 and self.remote_channels:
            await asyncio.wait(self.remote_channels, timeout=30)
        for w in watchers:
            w.cancel()
        for link in list(self.links.values()):
            await link.close("done" if code == 0 else "error", True)
        await self.broker.close()
        runner.cancel()
        return code


async def amain():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--metadata")
    p.add_argument("--unlisted", action="store_true")
    p.add_argument("--dial", action="append", default=[])
    p.add_argument("--dial-tag", action="append", default=[])
    p.add_argument("--send")
    p.add_argument("--recv")
    p.add_argument("--echo", action="store_true")
    p.add_argument("--ping", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--timeout", type=float, default=0)
    p.add_argument("--bind", help="accepted for CLI compatibility; aiortc binds every interface")
    p.add_argument("--ice", action="append", default=[])
    args = p.parse_args()
    if args.recv:
        os.makedirs(args.recv, exist_ok=True)
    async with aiohttp.ClientSession() as http:
        return await App(args, http).main()


if __name__ == "__main__":
    try:
        code = asyncio.run(amain())
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code)
