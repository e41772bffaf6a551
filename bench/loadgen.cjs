// notifyd benchmark load generator (Node + ws): N WebSocket connections that
// speak WAMP JSON (HELLO, SUBSCRIBE, EVENT) -- or, in raw mode, just receive
// frames (for the reference peers that do not speak WAMP).
//
//   node bench/loadgen.cjs '{"url": "...", "n": 1000, "mode": "wamp",
//        "topics": ["bench.t"], "expect": 200, "timeout": 60}'
//
// Prints "READY <ms>" once every connection is subscribed, then one JSON
// summary line when every connection got `expect` events (or on timeout):
// per-event latency percentiles (receive time - "sent" in the body), losses
// and gaps by sequence number, first/last receive times.
//
// "topicFormat" ("u{i}.invoice.sent") gives connection i its own topic (scenario
// T).  "mode": "stomp" speaks STOMP 1.2 over WebSocket to RabbitMQ's Web-STOMP
// plugin instead of WAMP: CONNECT, then one SUBSCRIBE per topic to
// /exchange/<stompExchange>/<topic> with a receipt (ready once it arrives).
// In raw mode a topicFormat is passed as ?topic=… in the URL.
//
// "reconnectUrl": when the server drops a connection (scenario R, a node
// dying), it connects again at once to that URL and SUBSCRIBEs with
// "_resume_after" set to the last publication id it got (or "resumeFrom" if it
// got none).  The summary then has "resubscribed" (connections subscribed again)
// and "storm" (first drop, last SUBSCRIBED after a drop, in seconds since epoch).
// With "expectSeq": N and "topicFormat", connection i must receive exactly the
// seq values i, i+N, i+2N, ... below "expectTotal": "missing" counts the holes.
//
// "subscribeOptions" are added to every SUBSCRIBE's options (e.g.
// {"_resume_after": 1234} to resume from a log position); the summary then
// has the time the first SUBSCRIBE went out ("subscribe_sent") and, with
// "checkPublications", the first and last publication id received and how
// many ids were not above the previous one on their connection.
"use strict";

const WebSocket = require("ws");
const cfg = JSON.parse(process.argv[2]);
const n = cfg.n;
const mode = cfg.mode || "wamp";
const expect = cfg.expect || 0;
// "tabsPerTopic": k gives k connections in a row the same topic (scenario S:
// k browser tabs of one user, each connected on its own)
const topicIndex = (i) => Math.floor(i / (cfg.tabsPerTopic || 1));
// "topicsPerConn": k with a topicFormat holding "{j}" gives connection i the
// k topics j = 0..k-1 (scenario X: many per-user subscriptions per session)
const topicsFor = (i) =>
  cfg.topicFormat && cfg.topicsPerConn
    ? Array.from({ length: cfg.topicsPerConn },
        (_, j) => cfg.topicFormat.replace("{i}", String(topicIndex(i))).replace("{j}", String(j)))
  : cfg.topicFormat ? [cfg.topicFormat.replace("{i}", String(topicIndex(i)))]
  : cfg.topicPerClient ? [`${cfg.topicPerClient}.${i}`] : cfg.topics || [];
const ownTopic = !!(cfg.topicPerClient || cfg.topicFormat);

let subscribed = 0;
let done = 0;
const started = Date.now();
const latencies = [];
let firstRecv = null;
let lastRecv = null;
let totalEvents = 0;
let gaps = 0;
let duplicates = 0;
const perConn = new Array(n).fill(0);
const lastSeq = new Array(n).fill(-1);
const sockets = [];
let readyAt = null;
let subscribeSent = null;
let subscribedAt = null;
const checkPubs = !!cfg.checkPublications;
const lastPub = new Array(n).fill(-1);
let pubFirst = null;
let pubLast = null;
let pubDisorder = 0;
let resubscribed = 0;
let firstDrop = null;
let lastResubscribe = null;
const reconnected = new Array(n).fill(false);
const seqSeen = cfg.expectSeq ? new Array(n).fill(null).map(() => new Set()) : null;

function finish(reason) {
  if (finished) return;
  latencies.sort((a, b) => a - b);
  const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
  let missing = expect
    ? perConn.reduce((acc, c) => acc + Math.max(0, expect - c), 0)
    : Math.max(0, (cfg.expectTotal || 0) - totalEvents);
  if (seqSeen) {
    missing = 0;
    for (let i = 0; i < n; i++) {
      for (let s = i; s < cfg.expectTotal; s += cfg.expectSeq) {
        if (!seqSeen[i].has(s)) {
          missing += 1;
          process.stderr.write(`conn ${i}: seq ${s} missing (reconnected ${reconnected[i]}, last publication ${lastPub[i]})\n`);
        }
      }
    }
  }
  process.stdout.write(JSON.stringify({
    reason, n, expect, events: totalEvents, missing, gaps, duplicates,
    ready_ms: readyAt, first_recv: firstRecv, last_recv: lastRecv,
    subscribe_sent: subscribeSent, subscribed_at: subscribedAt,
    publications: checkPubs ? { first: pubFirst, last: pubLast, disorder: pubDisorder } : null,
    resubscribed, storm: { first_drop: firstDrop, last_resubscribed: lastResubscribe },
    cpu_s: (() => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; })(),
    latency_ms: { p50: q(0.5), p99: q(0.99), max: latencies.length ? latencies[latencies.length - 1] : null,
                  count: latencies.length },
  }) + "\n");
  const quit = () => {
    for (const ws of sockets) ws.terminate();
    process.exit(0);
  };
  if (cfg.holdOpen && reason !== "stdin closed") {
    // keep the connections until the runner has read the server's CPU, so
    // closing 5000 sessions is not counted as the cost of the events
    finished = true;
    process.stdin.on("end", quit);
    process.stdin.resume();
  } else {
    quit();
  }
}
let finished = false;

function onEvent(i, value, publication) {
  const now = Date.now() / 1000;
  if (checkPubs && typeof publication === "number") {
    if (pubFirst === null) pubFirst = publication;
    pubLast = publication;
    if (publication <= lastPub[i]) pubDisorder += 1;
    lastPub[i] = publication;
  }
  if (firstRecv === null) firstRecv = now;
  lastRecv = now;
  totalEvents += 1;
  perConn[i] += 1;
  if (value && typeof value.sent === "number") {
    // sample latencies (all of them for small runs)
    if (latencies.length < 2_000_000) latencies.push((now - value.sent) * 1000);
  }
  if (seqSeen && value && typeof value.seq === "number") seqSeen[i].add(value.seq);
  if (value && typeof value.seq === "number") {
    if (value.seq <= lastSeq[i]) {
      duplicates += 1;
      if (cfg.expectSeq) process.stderr.write(`conn ${i}: seq ${value.seq} after ${lastSeq[i]} (publication ${publication}, reconnected ${reconnected[i]})\n`);
    }
    else if (value.seq !== lastSeq[i] + 1 && !ownTopic) gaps += value.seq - lastSeq[i] - 1;
    lastSeq[i] = Math.max(lastSeq[i], value.seq);
  }
  if (expect && perConn[i] === expect) {
    done += 1;
    if (done === n) finish("complete");
  }
  if (cfg.expectTotal && totalEvents === cfg.expectTotal) finish("complete");
}

function stompFrame(command, headers, body) {
  const lines = [command, ...Object.entries(headers).map(([k, v]) => `${k}:${v}`)];
  return lines.join("\n") + "\n\n" + (body || "") + "\0";
}

function openStomp(i, ws) {
  let pending = 0;
  ws.on("open", () => {
    ws.send(stompFrame("CONNECT", { "accept-version": "1.2", host: "/", login: "guest",
                                    passcode: "guest", "heart-beat": "0,0" }));
  });
  ws.on("message", (data) => {
    const text = data.toString();
    for (const raw of text.split("\0")) {
      const frame = raw.replace(/^\n+/, "");
      if (!frame) continue;
      const split = frame.indexOf("\n\n");
      const command = frame.slice(0, frame.indexOf("\n"));
      const body = split >= 0 ? frame.slice(split + 2) : "";
      if (command === "CONNECTED") {
        topicsFor(i).forEach((t, k) => {
          pending += 1;
          if (subscribeSent === null) subscribeSent = Date.now() / 1000;
          ws.send(stompFrame("SUBSCRIBE", { id: String(k), destination: `/exchange/${cfg.stompExchange}/${t}`,
                                            ack: "auto", receipt: `r${k}` }));
        });
        if (pending === 0) ready();
      } else if (command === "RECEIPT") {
        pending -= 1;
        if (pending === 0) ready();
      } else if (command === "MESSAGE") {
        onEvent(i, JSON.parse(body));
      } else if (command === "ERROR") {
        process.stderr.write(`conn ${i}: ${frame}\n`);
      }
    }
  });
}

function open(i) {
  const raw = mode === "raw" && cfg.topicFormat;
  const base = reconnected[i] ? cfg.reconnectUrl : cfg.url;
  const url = raw ? `${base}?topic=${topicsFor(i)[0]}` : base;
  const protocols = mode === "wamp" ? ["wamp.2.json"] : mode === "stomp" ? ["v12.stomp"] : [];
  const ws = new WebSocket(url, protocols, { perMessageDeflate: false });
  sockets.push(ws);
  ws.on("error", (e) => { process.stderr.write(`conn ${i}: ${e.message}\n`); });
  if (mode === "stomp") { openStomp(i, ws); return; }
  ws.on("open", () => {
    if (mode !== "wamp") { ready(); return; }
    ws.send(JSON.stringify([1, cfg.realm || "realm1", { roles: { subscriber: {} } }]));
  });
  ws.on("close", () => {
    if (!cfg.reconnectUrl || reconnected[i] || finished) return;
    // the node went away: come back at once (a storm), resuming
    if (firstDrop === null) firstDrop = Date.now() / 1000;
    reconnected[i] = true;
    open(i);
  });
  let pending = 0;
  ws.on("message", (data) => {
    const msg = JSON.parse(data);
    if (mode !== "wamp") { onEvent(i, msg); return; }
    switch (msg[0]) {
      case 2: // WELCOME
        topicsFor(i).forEach((t, k) => {
          pending += 1;
          const opts = Object.assign(cfg.match ? { match: cfg.match } : {}, cfg.subscribeOptions || {});
          if (reconnected[i]) opts._resume_after = lastPub[i] >= 0 ? lastPub[i] : cfg.resumeFrom;
          if (subscribeSent === null) subscribeSent = Date.now() / 1000;
          ws.send(JSON.stringify([32, k + 1, opts, t]));
        });
        if (pending === 0) ready();
        break;
      case 33: // SUBSCRIBED
        pending -= 1;
        if (reconnected[i]) {
          resubscribed += 1;
          lastResubscribe = Date.now() / 1000;
          break;
        }
        if (pending === 0) ready();
        break;
      case 36: // EVENT
        onEvent(i, msg[4] ? msg[4][0] : null, msg[2]);
        break;
      case 3: case 6: case 8:
        process.stderr.write(`conn ${i}: ${data}\n`);
        break;
    }
  });
}

function ready() {
  subscribed += 1;
  if (subscribed === n) {
    readyAt = Date.now() - started;
    subscribedAt = Date.now() / 1000;
    process.stdout.write(`READY ${readyAt}\n`);
    if (!expect && !cfg.expectTotal) {
      // idle mode: stay connected until stdin closes
      process.stdin.on("data", () => {});
      process.stdin.on("end", () => finish("stdin closed"));
    }
  }
}

// open connections in small batches so the accept queue is not the test
let next = 0;
function batch() {
  for (let k = 0; k < (cfg.batch || 200) && next < n; k++) open(next++);
  if (next < n) setImmediate(batch);
}
batch();
setTimeout(() => finish("timeout"), (cfg.timeout || 120) * 1000);
