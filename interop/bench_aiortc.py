#!/usr/bin/env python3
"""bench.mjs's rows for aiortc, same JSON lines (run through `node bench.mjs --stack aiortc`).

Two RTCPeerConnections in one process pass their descriptions directly (aiortc does not
trickle: candidates are in the SDP). Rows: setup, throughput, aggregate, memory — the
definitions are in bench.mjs.
"""

import argparse
import asyncio
import gc
import json
import resource
import time

from aiortc import RTCConfiguration, RTCPeerConnection

MSG = 16384
# The most one transfer may take, sending and receiving (--row-timeout): aiortc can
# stall with several connections at once, so the row fails with "stalled" instead.
ROW_TIMEOUT = 600


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def out(stack, **kw):
    print(json.dumps({"stack": stack, **kw}, separators=(",", ":")), flush=True)


async def connect_pair():
    cfg = RTCConfiguration(iceServers=[])
    a, b = RTCPeerConnection(cfg), RTCPeerConnection(cfg)
    remote = asyncio.get_running_loop().create_future()
    opened = asyncio.get_running_loop().create_future()
    b.on("datachannel", lambda ch: remote.done() or remote.set_result(ch))
    t0 = time.perf_counter()
    dc = a.createDataChannel("bench", ordered=True)
    dc.on("open", lambda: opened.done() or opened.set_result(None))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.wait_for(opened, 30)
    ms = (time.perf_counter() - t0) * 1000
    rdc = await asyncio.wait_for(remote, 30)
    return {"a": a, "b": b, "dc": dc, "rdc": rdc, "ms": ms}


async def close_pair(p):
    await p["a"].close()
    await p["b"].close()


async def transfer(p, nbytes):
    chunk = bytes(MSG)
    got = {"n": 0}
    done = asyncio.get_running_loop().create_future()

    def on_message(m):
        got["n"] += len(m)
        if got["n"] >= nbytes and not done.done():
            done.set_result(None)

    p["rdc"].on("message", on_message)
    dc = p["dc"]
    t0 = time.perf_counter()
    sent = 0
    deadline = t0 + ROW_TIMEOUT
    while sent < nbytes:
        while dc.bufferedAmount > 4 << 20:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"stalled: {sent} of {nbytes} bytes sent, {got['n']} received after {ROW_TIMEOUT:g} s")
            await asyncio.sleep(0.001)
        dc.send(chunk)
        sent += MSG
        if sent % (64 * MSG) == 0:
            await asyncio.sleep(0)
    try:
        await asyncio.wait_for(done, max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        raise RuntimeError(f"stalled: not done after {ROW_TIMEOUT:g} s, {got['n']} of {nbytes} bytes received") from None
    return time.perf_counter() - t0


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="setup,throughput,aggregate,memory")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--bytes", type=int, default=256 << 20)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--memory-connections", type=int, default=100)
    p.add_argument("--row-timeout", type=float, default=600)
    a = p.parse_args()
    global ROW_TIMEOUT
    ROW_TIMEOUT = a.row_timeout
    s = "aiortc"
    for row in a.rows.split(","):
        try:
            if row == "setup":
                times = []
                for _ in range(a.runs):
                    pair = await connect_pair()
                    times.append(pair["ms"])
                    await close_pair(pair)
                times.sort()

                def pct(q):
                    import math
                    return times[min(len(times) - 1, math.ceil(q * len(times)) - 1)]

                out(s, row=row, runs=len(times), median_ms=round(pct(0.5), 2), p99_ms=round(pct(0.99), 2), min_ms=round(times[0], 2), max_ms=round(times[-1], 2))
            elif row == "throughput":
                pair = await connect_pair()
                secs = await transfer(pair, a.bytes)
                await close_pair(pair)
                out(s, row=row, bytes=a.bytes, message_bytes=MSG, secs=round(secs, 3), mbps=round(a.bytes * 8 / secs / 1e6, 2))
            elif row == "aggregate":
                pairs = [await connect_pair() for _ in range(a.connections)]
                each = a.bytes // a.connections // MSG * MSG
                t0 = time.perf_counter()
                await asyncio.gather(*(transfer(x, each) for x in pairs))
                secs = time.perf_counter() - t0
                for x in pairs:
                    await close_pair(x)
                total = each * a.connections
                out(s, row=row, connections=a.connections, bytes=total, secs=round(secs, 3), mbps=round(total * 8 / secs / 1e6, 2))
            elif row == "memory":
                gc.collect()
                await asyncio.sleep(0.5)
                before = rss()
                pairs = [await connect_pair() for _ in range(a.memory_connections)]
                await asyncio.sleep(1)
                gc.collect()
                after = rss()
                out(s, row=row, connections=a.memory_connections, rss_before=before, rss_after=after, bytes_per_connection=round((after - before) / a.memory_connections))
                for x in pairs:
                    await close_pair(x)
            else:
                out(s, row=row, error="unknown row")
        except Exception as e:  # noqa: BLE001 - reported as the row's error
            out(s, row=row, error=repr(e))


if __name__ == "__main__":
    asyncio.run(main())
