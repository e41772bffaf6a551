// A client built on web/notifyd.js (which reconnects and re-subscribes by
// itself), for tests that stop nodes under it.
//
//   node tests/js/resilient.cjs URL[,URL...] TOPIC[:MATCH] ...
//
// Reports JSON lines: {"ev":"state","state":"live","session":...},
// {"ev":"subscribed","topic":...}, {"ev":"event","topic":...,"args":[...]},
// {"ev":"gap",...}.  Commands on stdin, one per line: "cut" drops the
// connection abruptly (no close frame, like a network cut) and holds every
// reconnect until "go".
"use strict";

const WS = require("ws");
const sockets = [];
class NodeWebSocket extends WS {
  constructor(...args) {
    super(...args);
    this.on("error", () => {});
    sockets.push(this);
  }
}
globalThis.WebSocket = globalThis.WebSocket || NodeWebSocket;

const autobahn = require("autobahn");
const NotifyD = require("../../web/notifyd.js");

const [urls, ...topics] = process.argv.slice(2);
const url = urls.includes(",") ? urls.split(",") : urls;
const report = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const notifier = NotifyD.connect({
  autobahn,
  url,
  toasts: false,
  backoff: { initial: 0.2, max: 2, growth: 1.5, jitter: 0.2, spread: 0.5 },
});
notifier.on("state", (state, info) => report({ ev: "state", state, session: info.session || null,
  wampReason: info.wampReason || null }));
notifier.on("subscribed", (s) => report({ ev: "subscribed", topic: s.topic, match: s.match,
  resumed: s.resumed }));
notifier.on("error", (e) => report({ ev: "error", topic: e.topic, error: e.error }));
notifier.on("event", (e) => report({ ev: "event", topic: e.topic, sub: e.subscription.topic, args: e.args,
  publication: e.publication, retained: e.retained }));
notifier.on("gap", (g) => report({ ev: "gap", topic: g.topic, requested: g.requested,
  first: g.first, position: g.position }));
for (const t of topics) {
  const [topic, match] = t.split(":");
  notifier.subscribe(topic, { match: match || "exact", toast: false });
}
let held = null;
const open = notifier._open.bind(notifier);
notifier._open = () => (held ? held.push(open) : open());
require("readline").createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "cut") {
    held = [];
    for (const ws of sockets) ws.terminate();
    report({ ev: "cut" });
  } else if (cmd === "go") {
    const pending = held || [];
    held = null;
    pending.forEach((f) => f());
  }
});
process.stdin.on("end", () => process.exit(0));
