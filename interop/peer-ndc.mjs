#!/usr/bin/env node
// A `glare peer` (CLI.md) on libdatachannel (node-datachannel), through glare.js.
import { main } from "./lib/node-cli.mjs";
import { NdcPeerConnection, cleanup } from "./lib/ndc-rtc.mjs";

await main("peer-ndc", NdcPeerConnection, (o) => ({ iceServers: [], bindAddress: o.bind ?? undefined }), {
  onExit: cleanup,
  // libdatachannel sometimes loses its ICE transport when its first offer is rolled back.
  freshPcOnFirstGlare: true,
});
