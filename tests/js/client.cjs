// A scripted Autobahn|JS client for notifyd's integration tests.
//
//   node tests/js/client.cjs URL REALM SERIALIZER
//
// Reads one JSON command per line on stdin and reports one JSON line per
// happening on stdout:
//   {"op":"subscribe","tag":"a","topic":"invoice.","match":"prefix","options":{"get_retained":true}}
//   {"op":"call","tag":"c","procedure":"wamp.subscription.get_events","args":[1, 10]}
//   {"op":"unsubscribe","tag":"a"}
//   {"op":"publish","tag":"p","topic":"x.y","args":[1],"kwargs":{},"options":{"acknowledge":true}}
//   {"op":"leave"}            (GOODBYE)   {"op":"exit"}
// Reports: open, subscribed, unsubscribed, event, published, result, error, close.
"use strict";

const WS = require("ws");
// Node 20 has no global WebSocket: give Autobahn|JS the ws package's.
class NodeWebSocket extends WS {
  constructor(...args) {
    super(...args);
    this.on("error", () => {}); // reported through onclose
  }
}
globalThis.WebSocket = globalThis.WebSocket || NodeWebSocket;

const autobahn = require("autobahn");
const readline = require("readline");

const [url, realm, serializerName, authJson] = process.argv.slice(2);
// optional 4th argument: {"authmethods": [...], "authid": "...", "ticket": "...", "secret": "..."}
const auth = authJson ? JSON.parse(authJson) : {};
const serializers = {
  json: () => new autobahn.serializer.JSONSerializer(),
  msgpack: () => new autobahn.serializer.MsgpackSerializer(),
  cbor: () => new autobahn.serializer.CBORSerializer(),
};
if (!serializers[serializerName]) {
  console.error(`unknown serializer ${serializerName}`);
  process.exit(2);
}

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function plain(value) {
  // msgpack/cbor may hand back Buffers or Maps; make them JSON-able.
  // Long strings (bulk test payloads) are reported by length only.
  return JSON.parse(JSON.stringify(value === undefined ? null : value, (k, v) =>
    typeof v === "string" && v.length > 200 ? `<${v.length} chars>` : v));
}

const connection = new autobahn.Connection({
  url,
  realm,
  serializers: [serializers[serializerName]()],
  max_retries: 0,
  retry_if_unreachable: false,
  authmethods: auth.authmethods,
  authid: auth.authid,
  onchallenge: (session, method, extra) => {
    if (method === "ticket") return auth.ticket;
    if (method === "wampcra") {
      let key = auth.secret;
      if (extra.salt) key = autobahn.auth_cra.derive_key(key, extra.salt, extra.iterations, extra.keylen);
      return autobahn.auth_cra.sign(key, extra.challenge);
    }
    throw new Error("unexpected challenge " + method);
  },
});

let session = null;
const subscriptions = {};
const queue = [];

async function run(cmd) {
  const tag = cmd.tag;
  try {
    if (cmd.op === "subscribe") {
      const options = Object.assign(cmd.match ? { match: cmd.match } : {}, cmd.options || {});
      const sub = await session.subscribe(
        cmd.topic,
        (args, kwargs, details) => {
          report({
            ev: "event",
            tag,
            args: plain(args),
            kwargs: plain(kwargs),
            topic: details.topic,
            publisher: details.publisher === undefined ? null : details.publisher,
            publication: details.publication,
            retained: details.retained,
            received: Date.now() / 1000,
          });
        },
        options,
      );
      subscriptions[tag] = sub;
      report({ ev: "subscribed", tag, id: sub.id });
    } else if (cmd.op === "unsubscribe") {
      await session.unsubscribe(subscriptions[tag]);
      report({ ev: "unsubscribed", tag });
    } else if (cmd.op === "publish") {
      const res = await session.publish(cmd.topic, cmd.args || [], cmd.kwargs || {}, cmd.options || {});
      report({ ev: "published", tag, id: res ? res.id : null });
    } else if (cmd.op === "call") {
      const res = await session.call(cmd.procedure, cmd.args || [], cmd.kwargs || {});
      report({ ev: "result", tag, value: plain(res) });
    } else if (cmd.op === "leave") {
      session.leave("wamp.close.normal", "bye");
    } else if (cmd.op === "exit") {
      process.exit(0);
    }
  } catch (err) {
    report({ ev: "error", tag, error: err && err.error ? err.error : String(err), args: plain(err && err.args),
             kwargs: plain(err && err.kwargs) });
  }
}

connection.onopen = (s, details) => {
  session = s;
  report({ ev: "open", session: s.id, serializer: serializerName, authid: details.authid,
           authrole: details.authrole, authmethod: details.authmethod, authextra: plain(details.authextra) });
  while (queue.length) run(queue.shift());
};

connection.onclose = (reason, details) => {
  report({ ev: "close", reason, details: plain({ reason: details && details.reason, message: details && details.message }) });
  process.exit(0);
  return true;
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (session) run(cmd);
  else queue.push(cmd);
});

connection.open();
