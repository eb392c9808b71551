// The behaviour of `glare peer` (CLI.md) on top of glare.js, shared by every harness
// that has a W3C RTCPeerConnection: Node stacks (libdatachannel, libwebrtc, werift)
// and Chromium (this module is loaded into the page as it is). Web APIs only.
//
// opts: {broker, tags, metadata, unlisted, dial, dialTag, send: {name, bytes} | null,
//        recv, echo, ping, count, timeoutSecs}
// env:  {glare (the glare.js module), out(line), err(line), saveFile(name, bytes),
//        exit(code), RTCPeerConnection, rtcConfig, EventSource, fetch, tieBreaker,
//        candidateFilter, freshPcOnFirstGlare, mediaStream (tracks to add to every link
//        once connected), onTrack(link, RTCTrackEvent)}

export async function runPeer(opts, env) {
  const G = env.glare;
  const completions = { n: 0 };
  const receiverCloses = [];
  const remoteChannels = [];
  let finished = false;
  const finish = async (code, why) => {
    if (finished) return;
    finished = true;
    if (why) env.err(why);
    if (code === 0) {
      // Keep links up until every sender closed its file channel (or 3 s passed).
      await Promise.race([Promise.all(receiverCloses), new Promise((r) => setTimeout(r, 3000))]);
      // ... and while the remote still uses an echo channel (at most 30 s more).
      await Promise.race([Promise.all(remoteChannels), new Promise((r) => setTimeout(r, 30000))]);
    }
    await Promise.race([peer.close(code === 0 ? "done" : "error"), new Promise((r) => setTimeout(r, 2000))]).catch(() => {});
    env.exit(code);
  };
  const complete = () => {
    completions.n++;
    if (opts.count && completions.n >= opts.count) finish(0);
  };

  const peer = new G.Peer({
    broker: opts.broker,
    tags: opts.tags ?? [],
    metadata: opts.metadata ?? null,
    list: !opts.unlisted,
    RTCPeerConnection: env.RTCPeerConnection,
    rtcConfig: env.rtcConfig,
    EventSource: env.EventSource,
    fetch: env.fetch,
    tieBreaker: env.tieBreaker,
    candidateFilter: env.candidateFilter,
    freshPcOnFirstGlare: env.freshPcOnFirstGlare,
    connectBackstopMs: env.connectBackstopMs,
    onSignal: opts.debug ? (dir, m) => env.err(`signal ${dir} ${JSON.stringify(m)}`) : undefined,
  });
  if (opts.timeoutSecs) {
    setTimeout(() => finish(1, `timeout: not done after ${opts.timeoutSecs} s (${completions.n} of ${opts.count ?? "?"} done)`), opts.timeoutSecs * 1000);
  }
  peer.on("error", (e) => env.err(`error: ${e.message ?? e}`));
  peer.on("link", (link) => {
    link.on("warn", (e) => env.err(`warn ${link.remote}: ${e?.message ?? e}`));
    link.on("track", (e) => env.onTrack?.(link, e));
    link.on("connected", ({ role, ms }) => {
      env.out(`connected ${link.remote} role=${role} ms=${ms}`);
      // As `glare peer` does (stderr): the selected pair, for netlab's matrix.
      candidatePairLine(link.pc).then((l) => l && env.err(l), () => {});
      if (env.mediaStream) {
        // Renegotiates over glare-signal; both sides doing it at once is an in-band glare.
        for (const t of env.mediaStream.getTracks()) link.addTrack(t, env.mediaStream);
      }
      if (opts.send) {
        G.sendFile(link, opts.send.name, opts.send.bytes)
          .then((r) => {
            env.out(`sent ${r.name} ${r.size} ${r.sha256} mbps=${r.mbps.toFixed(1)}`);
            complete();
          })
          .catch((e) => finish(1, `send ${opts.send.name} to ${link.remote}: ${e.message}`));
      }
      if (opts.ping) {
        G.pingEcho(link, opts.ping)
          .then((r) => {
            env.out(`echoed ${r.count} ms=${r.ms}`);
            complete();
          })
          .catch((e) => finish(1, `echo with ${link.remote}: ${e.message}`));
      }
    });
    link.on("datachannel", (dc) => {
      if (opts.debug) {
        env.err(`datachannel ${dc.label} id=${dc.id} state=${dc.readyState}`);
        let seen = 0;
        setTimeout(() => {
          const inner = dc.onmessage;
          dc.onmessage = (e) => {
            if (seen++ < 2) env.err(`first on ${dc.label}/${dc.id}: ${typeof e.data === "string" ? e.data.slice(0, 60) : `${e.data.byteLength} bytes`}`);
            inner?.(e);
          };
        }, 0);
      }
      if (dc.label === G.FILE_LABEL) {
        if (!opts.recv) {
          dc.close();
          return;
        }
        G.receiveFile(dc)
          .then(async (r) => {
            receiverCloses.push(r.closed);
            await env.saveFile(r.name, r.bytes);
            env.out(`received ${r.name} ${r.size} ${r.sha256} mbps=${r.mbps.toFixed(1)}`);
            complete();
          })
          .catch(async (e) => {
            if (opts.debug && e.bytes) await env.saveFile(`${e.fileName}.bad`, e.bytes).catch(() => {});
            finish(1, `receive from ${link.remote}: ${e.message}`);
          });
      } else if (opts.echo) {
        G.echo(dc);
        // Keep the link up while the remote still uses an echo channel.
        remoteChannels.push(
          new Promise((r) => {
            const prev = dc.onclose;
            dc.onclose = (e) => {
              prev?.(e);
              r();
            };
          }),
        );
      }
    });
    link.on("closed", (reason) => {
      env.out(`closed ${link.remote} ${reason}`);
      if (opts.debug) env.err(`link stats ${link.remote}: ${JSON.stringify(link.stats)}`);
    });
  });
  try {
    await peer.start();
  } catch (e) {
    await finish(1, `broker: ${e.message}`);
    return peer;
  }
  env.out(`sid ${peer.sid}`);
  for (const sid of opts.dial ?? []) peer.dial(sid);
  for (const tag of opts.dialTag ?? []) peer.dialTag(tag);
  return peer;
}

/** `candidate pair TYPE/TYPE LOCAL -> REMOTE` from a connected RTCPeerConnection's stats. */
async function candidatePairLine(pc) {
  const stats = await pc?.getStats?.();
  if (!stats) return null;
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => { if (!pair && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  const l = pair && stats.get(pair.localCandidateId);
  const r = pair && stats.get(pair.remoteCandidateId);
  if (!l || !r) return null;
  return `candidate pair ${l.candidateType}/${r.candidateType} ${l.address}:${l.port} -> ${r.address}:${r.port}`;
}
