// The subset of W3C RTCPeerConnection / RTCDataChannel that glare.js uses, over
// libdatachannel's native API (node-datachannel). node-datachannel's own polyfill is
// not used: it cannot roll back, cannot set an answer after a remote offer, and drops
// usernameFragment. libdatachannel itself rolls back (implicitly on a remote offer in
// have-local-offer, or explicitly with setLocalDescription('rollback')).

import ndc from "node-datachannel";

let counter = 0;
if (process.env.GLARE_NDC_LOG) ndc.initLogger(process.env.GLARE_NDC_LOG, (level, msg) => process.stderr.write(`libdatachannel ${level}: ${msg}\n`));

function ufragOf(sdp) {
  const m = /^a=ice-ufrag:(\S+)/m.exec(sdp ?? "");
  return m ? m[1] : null;
}

export class NdcDataChannel {
  constructor(native, ordered = true) {
    this._dc = native;
    this.label = native.getLabel();
    this.protocol = native.getProtocol();
    this.ordered = ordered;
    this.binaryType = "arraybuffer";
    this.onopen = null;
    this.onclose = null;
    this.onmessage = null;
    this.onerror = null;
    this.onbufferedamountlow = null;
    this._closed = false;
    this._threshold = 0;
    native.onOpen(() => this.onopen?.({ type: "open" }));
    native.onClosed(() => {
      if (this._closed) return;
      this._closed = true;
      this.onclose?.({ type: "close" });
    });
    native.onError((err) => this.onerror?.({ type: "error", error: new Error(err) }));
    native.onBufferedAmountLow(() => this.onbufferedamountlow?.({ type: "bufferedamountlow" }));
    native.onMessage((msg) => {
      let data = msg;
      if (typeof msg !== "string") {
        const b = Buffer.isBuffer(msg) ? msg : Buffer.from(msg);
        data = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
      }
      this.onmessage?.({ type: "message", data });
    });
  }
  get id() {
    return this._dc.getId();
  }
  get readyState() {
    if (this._closed) return "closed";
    return this._dc.isOpen() ? "open" : "connecting";
  }
  get bufferedAmount() {
    return this._dc.bufferedAmount();
  }
  get bufferedAmountLowThreshold() {
    return this._threshold;
  }
  set bufferedAmountLowThreshold(v) {
    this._threshold = v;
    this._dc.setBufferedAmountLowThreshold(v);
  }
  send(data) {
    if (typeof data === "string") {
      this._dc.sendMessage(data);
      return;
    }
    const view = ArrayBuffer.isView(data) ? data : new Uint8Array(data);
    this._dc.sendMessageBinary(Buffer.from(view.buffer, view.byteOffset, view.byteLength));
  }
  close() {
    this._dc.close();
  }
}

export class NdcPeerConnection {
  /** config: {iceServers, bindAddress?} (iceServers as W3C RTCIceServer[]). */
  constructor(config = {}) {
    this._config = config;
    this.onicecandidate = null;
    this.ondatachannel = null;
    this.onnegotiationneeded = null;
    this.onconnectionstatechange = null;
    this.oniceconnectionstatechange = null;
    this.onicegatheringstatechange = null;
    this.onsignalingstatechange = null;
    this._waiters = [];
    this._closed = false;
    this._untouched = true; // no local description and no channel yet
    this._makeNative();
  }

  _makeNative() {
    const iceServers = (this._config.iceServers ?? []).flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls]));
    this._pc = new ndc.PeerConnection(`glare-${++counter}`, {
      iceServers,
      bindAddress: this._config.bindAddress,
      disableAutoNegotiation: true,
      maxMessageSize: 262144,
    });
    const pc = this._pc;
    const live = () => this._pc === pc; // callbacks of a replaced native connection are ignored
    pc.onLocalDescription((sdp, type) => {
      if (!live()) return;
      const w = this._waiters;
      this._waiters = [];
      for (const r of w) r({ sdp, type });
    });
    pc.onLocalCandidate((candidate, mid) => {
      if (!live()) return;
      const c = candidate.startsWith("a=") ? candidate.slice(2) : candidate;
      const ufrag = ufragOf(pc.localDescription()?.sdp);
      this.onicecandidate?.({ candidate: { candidate: c, sdpMid: mid, sdpMLineIndex: 0, usernameFragment: ufrag } });
    });
    pc.onGatheringStateChange((state) => {
      if (!live()) return;
      this.onicegatheringstatechange?.({});
      if (state === "complete") this.onicecandidate?.({ candidate: null });
    });
    pc.onStateChange(() => live() && this.onconnectionstatechange?.({}));
    pc.onIceStateChange(() => live() && this.oniceconnectionstatechange?.({}));
    pc.onSignalingStateChange(() => live() && this.onsignalingstatechange?.({}));
    pc.onDataChannel((dc) => live() && this.ondatachannel?.({ channel: new NdcDataChannel(dc) }));
  }

  get signalingState() {
    return this._closed ? "closed" : this._pc.signalingState();
  }
  get iceGatheringState() {
    return this._closed ? "complete" : this._pc.gatheringState();
  }
  get connectionState() {
    return this._closed ? "closed" : this._pc.state();
  }
  get iceConnectionState() {
    return this._closed ? "closed" : this._pc.iceState();
  }
  get localDescription() {
    return this._closed ? null : this._pc.localDescription();
  }
  get remoteDescription() {
    return this._closed ? null : this._pc.remoteDescription();
  }
  createDataChannel(label, init = {}) {
    this._untouched = false;
    const native = this._pc.createDataChannel(label, {
      protocol: init.protocol ?? "",
      unordered: init.ordered === false,
      ...(init.maxRetransmits != null ? { maxRetransmits: init.maxRetransmits } : {}),
    });
    return new NdcDataChannel(native, init.ordered !== false);
  }
  async setLocalDescription(desc) {
    this._untouched = false;
    if (desc?.type === "rollback") {
      this._pc.setLocalDescription("rollback");
      return;
    }
    const type = desc?.type ?? (this.signalingState === "have-remote-offer" ? "answer" : "offer");
    const done = new Promise((r) => this._waiters.push(r));
    this._pc.setLocalDescription(type);
    await Promise.race([done, new Promise((r) => setTimeout(r, 2000))]);
  }
  async setRemoteDescription(desc) {
    try {
      this._pc.setRemoteDescription(desc.sdp, desc.type);
    } catch (err) {
      // libdatachannel sometimes fails a remote offer with "Got a remote candidate
      // without ICE transport" (a race inside it, seen under CPU load). A connection
      // that has done nothing yet can be replaced by a new one and the offer retried.
      if (!(this._untouched && /without ICE transport/.test(String(err?.message)))) throw err;
      this.onwarning?.(err);
      this._pc.close();
      this._makeNative();
      this._pc.setRemoteDescription(desc.sdp, desc.type);
    }
  }
  async addIceCandidate(c) {
    if (!c || !c.candidate) return; // libdatachannel has no end-of-candidates call
    this._pc.addRemoteCandidate(c.candidate, c.sdpMid ?? "0");
  }
  close() {
    if (this._closed) return;
    this._closed = true;
    this._pc.close();
  }
}

export function cleanup() {
  ndc.cleanup();
}
