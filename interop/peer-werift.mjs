#!/usr/bin/env node
// A `glare peer` (CLI.md) on werift (pure TypeScript), through glare.js.
import { RTCPeerConnection } from "werift";
import { main } from "./lib/node-cli.mjs";

// werift takes about 6 s to connect here: an ICE restart after glare.js's default 5 s
// would only start it over.
await main("peer-werift", RTCPeerConnection, () => ({ iceServers: [] }), { connectBackstopMs: 20000 });
