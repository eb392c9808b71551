#!/usr/bin/env node
// A `glare peer` (CLI.md) on libwebrtc M106 (@roamhq/wrtc), through glare.js.
import wrtc from "./lib/wrtc-fix.mjs";
import { main } from "./lib/node-cli.mjs";

await main("peer-wrtc", wrtc.RTCPeerConnection);
