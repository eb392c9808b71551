// A minimal EventSource for Node on top of fetch: enough for glare.js (named events,
// `lastEventId`, onopen/onerror, close). It never reconnects by itself: glare.js
// reopens channels with cid, key and lastEventId, which a plain EventSource cannot do.

export class EventSource {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.onopen = null;
    this.onerror = null;
    this.onmessage = null;
    this._listeners = new Map();
    this._abort = new AbortController();
    this._run().catch(() => this._fail());
  }

  addEventListener(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, []);
    this._listeners.get(type).push(fn);
  }

  close() {
    this.readyState = 2;
    this._abort.abort();
  }

  _dispatch(type, event) {
    for (const fn of this._listeners.get(type) ?? []) fn(event);
    if (type === "message") this.onmessage?.(event);
  }

  _fail() {
    if (this.readyState === 2) return;
    this.readyState = 2;
    this.onerror?.({ type: "error" });
  }

  async _run() {
    const res = await fetch(this.url, { headers: { accept: "text/event-stream" }, signal: this._abort.signal });
    if (res.status !== 200 || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      await res.body?.cancel().catch(() => {});
      this._fail();
      return;
    }
    this.readyState = 1;
    this.onopen?.({ type: "open" });
    const decoder = new TextDecoder();
    let buf = "";
    let type = "";
    let data = [];
    let lastEventId = "";
    for await (const chunk of res.body) {
      buf += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (data.length) this._dispatch(type || "message", { type: type || "message", data: data.join("\n"), lastEventId });
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) lastEventId = value;
      }
      if (this.readyState === 2) return;
    }
    this._fail();
  }
}
