// Works around two @roamhq/wrtc (libwebrtc M106 binding) event-delivery bugs seen in
// the interop matrix:
// - a message on a channel the remote just opened may be dispatched before the
//   connection's `datachannel` event, i.e. before anyone could set `onmessage`, and is
//   then dropped (seen as a file header or the first echo going missing);
// - a channel created inside another channel's event handler may reach `open` without
//   firing its `open` event (glare.js polls readyState for that one).
// Messages that arrive while a channel has no message handler are kept and delivered,
// in order, once `onmessage` is set.
import wrtc from "@roamhq/wrtc";

const proto = wrtc.RTCDataChannel.prototype;
const dispatch = proto.dispatchEvent;
proto.dispatchEvent = function (event) {
  if (event.type === "message" && !this._glareOnmessage && !(this._listeners?.message?.size > 0)) {
    (this._glarePending ??= []).push(event);
    return;
  }
  return dispatch.call(this, event);
};
Object.defineProperty(proto, "onmessage", {
  configurable: true,
  get() {
    return this._glareOnmessage ?? null;
  },
  set(fn) {
    this._glareOnmessage = fn;
    const pending = this._glarePending;
    if (fn && pending?.length) {
      this._glarePending = [];
      for (const e of pending) dispatch.call(this, e);
    }
  },
});

export default wrtc;
