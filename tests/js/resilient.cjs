// A client built on web/notifyd.js (which reconnects and re-subscribes by
// itself), for tests that stop nodes under it.
//
//   node tests/js/resilient.cjs URL TOPIC[:MATCH] ...
//
// Reports JSON lines: {"ev":"state","state":"live","session":...},
// {"ev":"subscribed","topic":...}, {"ev":"event","topic":...,"args":[...]}.
"use strict";

const WS = require("ws");
class NodeWebSocket extends WS {
  constructor(...args) {
    super(...args);
    this.on("error", () => {});
  }
}
globalThis.WebSocket = globalThis.WebSocket || NodeWebSocket;

const autobahn = require("autobahn");
const NotifyD = require("../../web/notifyd.js");

const [url, ...topics] = process.argv.slice(2);
const report = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const notifier = NotifyD.connect({
  autobahn,
  url,
  toasts: false,
  backoff: { initial: 0.2, max: 2, growth: 1.5, jitter: 0.2 },
});
notifier.on("state", (state, info) => report({ ev: "state", state, session: info.session || null,
  wampReason: info.wampReason || null }));
notifier.on("subscribed", (s) => report({ ev: "subscribed", topic: s.topic, match: s.match }));
notifier.on("error", (e) => report({ ev: "error", topic: e.topic, error: e.error }));
notifier.on("event", (e) => report({ ev: "event", topic: e.topic, args: e.args }));
for (const t of topics) {
  const [topic, match] = t.split(":");
  notifier.subscribe(topic, { match: match || "exact", toast: false });
}
process.stdin.on("data", () => {});
process.stdin.on("end", () => process.exit(0));
