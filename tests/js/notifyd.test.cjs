// Unit tests of web/notifyd.js with a fake Autobahn|JS: reconnect with
// backoff, re-subscribe after every reconnect, and the connection states.
// Run with: node --test tests/js/
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const NotifyD = require("../../web/notifyd.js");

const { fakeAutobahn } = require("./fake_autobahn.cjs");

const settle = () => new Promise((r) => setImmediate(r));

function connect(ab, extra) {
  return NotifyD.connect({
    autobahn: ab,
    url: "ws://example.test/ws",
    toasts: false,
    backoff: { initial: 1, max: 4, growth: 2, jitter: 0, spread: 0 },
    ...extra,
  });
}

test("subscribes wanted topics once the session opens", async () => {
  const ab = fakeAutobahn();
  const n = connect(ab, { serializer: "msgpack" });
  const states = [];
  n.on("state", (s) => states.push(s));
  n.subscribe("invoice.", { match: "prefix" });
  n.subscribe("client.created");
  const conn = ab.connections[0];
  assert.equal(conn.options.serializers[0].SERIALIZER_ID, "msgpack");
  assert.equal(conn.options.max_retries, 0);
  const s = conn.join(1);
  await settle();
  assert.deepEqual(s.subscribes, [
    { topic: "invoice.", options: { match: "prefix" } },
    { topic: "client.created", options: {} },
  ]);
  assert.deepEqual(states, ["connecting", "live"]);
});

test("delivers events with the concrete topic", async () => {
  const ab = fakeAutobahn();
  const n = connect(ab);
  const got = [];
  n.on("event", (e) => got.push(e));
  const onEvent = [];
  n.subscribe("invoice.", { match: "prefix", onEvent: (e) => onEvent.push(e.topic) });
  const s = ab.connections[0].join(1);
  await settle();
  s.handlers["invoice."]([{ invoice: "INV-1" }], {}, { topic: "invoice.sent", publication: 7 });
  assert.equal(got.length, 1);
  assert.equal(got[0].topic, "invoice.sent");
  assert.deepEqual(got[0].args, [{ invoice: "INV-1" }]);
  assert.deepEqual(onEvent, ["invoice.sent"]);
});

test("reconnects with growing backoff and re-subscribes everything", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  const states = [];
  const disconnects = [];
  n.on("state", (s) => states.push(s));
  n.on("disconnect", (d) => disconnects.push(d.retryIn));
  n.subscribe("invoice.", { match: "prefix" });
  const keep = n.subscribe("client.created");
  const drop = n.subscribe("payroll.run");
  ab.connections[0].join(1);
  await settle();

  // the connection is lost; Autobahn is told not to retry by itself
  assert.equal(ab.connections[0].lose(), true);
  assert.equal(n.state, "reconnecting");
  drop.unsubscribe(); // while disconnected: must not come back
  t.mock.timers.tick(999);
  assert.equal(ab.connections.length, 1);
  t.mock.timers.tick(1);
  assert.equal(ab.connections.length, 2);
  assert.equal(ab.connections[1].opened, 1);

  // the next attempt fails too: the delay doubles
  ab.connections[1].lose("unreachable");
  t.mock.timers.tick(1999);
  assert.equal(ab.connections.length, 2);
  t.mock.timers.tick(1);
  assert.equal(ab.connections.length, 3);

  const s = ab.connections[2].join(2);
  await settle();
  assert.deepEqual(s.subscribes.map((x) => x.topic), ["invoice.", "client.created"]);
  assert.equal(n.state, "live");
  assert.equal(n.reconnects, 1);
  assert.deepEqual(disconnects, [1, 2]);
  assert.deepEqual(states, ["connecting", "live", "reconnecting", "live"]);

  // after a success the backoff starts over
  ab.connections[2].lose();
  assert.deepEqual(disconnects, [1, 2, 1]);
  assert.ok(keep);
});

test("a router GOODBYE (system shutdown) is followed by a reconnect", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  n.subscribe("invoice.sent");
  ab.connections[0].join(1);
  await settle();
  ab.connections[0].lose("closed", { reason: "wamp.close.system_shutdown" });
  assert.equal(n.state, "reconnecting");
  t.mock.timers.tick(1000);
  const s = ab.connections[1].join(2);
  await settle();
  assert.deepEqual(s.subscribes.map((x) => x.topic), ["invoice.sent"]);
});

test("the first retry after a live session is spread out; later ones back off", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  t.mock.method(Math, "random", () => 0.5);
  const ab = fakeAutobahn();
  const n = connect(ab, { backoff: { initial: 1, max: 30, growth: 2, jitter: 0.2, spread: 4 } });
  const delays = [];
  n.on("disconnect", (d) => delays.push(d.retryIn));
  ab.connections[0].join(1);
  await settle();
  ab.connections[0].lose(); // live -> lost: initial + 0.5 * spread
  t.mock.timers.tick(3000);
  ab.connections[1].lose("unreachable"); // not live: growth, jitter 0 at random 0.5
  t.mock.timers.tick(2000);
  assert.deepEqual(delays, [3, 2]);
  assert.equal(ab.connections.length, 3);
  ab.connections[2].join(2);
  await settle();
  ab.connections[2].lose(); // live again: spread again
  assert.deepEqual(delays, [3, 2, 3]);
});

test("backoff is capped", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  const delays = [];
  n.on("disconnect", (d) => delays.push(d.retryIn));
  for (let i = 0; i < 5; i++) {
    ab.connections[i].lose("unreachable");
    t.mock.timers.tick(10000);
  }
  assert.deepEqual(delays, [1, 2, 4, 4, 4]);
  assert.equal(n.state, "connecting"); // never live yet
});

test("close() stops for good", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  ab.connections[0].join(1);
  n.close();
  assert.equal(n.state, "closed");
  t.mock.timers.tick(60000);
  assert.equal(ab.connections.length, 1);
});

test("unsubscribe while live sends UNSUBSCRIBE", async () => {
  const ab = fakeAutobahn();
  const n = connect(ab);
  const h = n.subscribe("a.b");
  const s = ab.connections[0].join(1);
  await settle();
  await h.unsubscribe();
  assert.deepEqual(s.unsubscribes, ["a.b"]);
  assert.deepEqual(n.subscriptions(), []);
});

test("a ticket function is asked on every connect", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  let calls = 0;
  const n = connect(ab, { ticket: () => "token-" + ++calls });
  const opts = ab.connections[0].options;
  assert.deepEqual(opts.authmethods, ["ticket"]);
  assert.equal(opts.onchallenge(null, "ticket", {}), "token-1");
  ab.connections[0].lose("closed", { reason: "wamp.close.auth_expired" });
  t.mock.timers.tick(1000);
  assert.equal(ab.connections[1].options.onchallenge(null, "ticket", {}), "token-2");
  assert.throws(() => ab.connections[1].options.onchallenge(null, "wampcra", {}));
  assert.equal(n.state, "connecting");
});

test("resumes after the last log position, and reports a gap it cannot fill", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab, { url: ["ws://a.test/ws", "ws://b.test/ws"], resumeAfter: 40 });
  const gaps = [];
  n.on("gap", (g) => gaps.push(g));
  const h = n.subscribe("invoice.sent");
  const s1 = ab.connections[0].join(1);
  await settle();
  // the page-render position is where the first subscribe starts
  assert.deepEqual(s1.subscribes[0].options, { _resume_after: 40 });
  s1.handlers["invoice.sent"]([1], {}, { publication: 41 });
  s1.handlers["invoice.sent"]([2], {}, { publication: 42 });
  // retained events and random (non-log) ids are not positions
  s1.handlers["invoice.sent"]([0], {}, { publication: 2 ** 51 + 5, retained: true });
  s1.handlers["invoice.sent"]([3], {}, { publication: 2 ** 52 + 9 });
  assert.equal(h.position(), 42);

  ab.connections[0].lose();
  t.mock.timers.tick(1000);
  assert.equal(ab.connections[1].options.url, "ws://b.test/ws");
  const s2 = ab.connections[1].join(2);
  await settle();
  assert.deepEqual(s2.subscribes[0].options, { _resume_after: 42 });

  // next time the log no longer reaches back: a gap, then go on from the
  // newest position so nothing after it is missed too
  ab.connections[1].lose();
  t.mock.timers.tick(2000);
  const s3 = new (Object.getPrototypeOf(s2).constructor)(3);
  s3.failures = [{ error: "notifyd.error.not_recovered", args: ["gone"],
                   kwargs: { requested: 42, first: 90, position: 120 } }];
  ab.connections[2].session = s3;
  ab.connections[2].onopen(s3, {});
  await settle();
  await settle();
  assert.deepEqual(gaps.map((g) => [g.topic, g.requested, g.first, g.position]),
                   [["invoice.sent", 42, 90, 120]]);
  assert.deepEqual(s3.subscribes.map((x) => x.options), [{ _resume_after: 42 }, { _resume_after: 120 }]);
});

test("falls back to plain subscriptions where the router keeps no history", async () => {
  const ab = fakeAutobahn();
  const n = connect(ab, { resumeAfter: 7 });
  const errors = [];
  n.on("error", (e) => errors.push(e));
  n.subscribe("chat.room", { retained: true });
  const conn = ab.connections[0];
  conn.session = new (fakeSessionClass())(1);
  conn.session.failures = [{ error: "notifyd.error.history_unavailable", args: ["no"] }];
  conn.onopen(conn.session, {});
  await settle();
  await settle();
  assert.deepEqual(conn.session.subscribes.map((x) => x.options),
                   [{ _resume_after: 7, get_retained: true }, { get_retained: true }]);
  assert.deepEqual(errors, []);
});

function fakeSessionClass() {
  const probe = fakeAutobahn();
  const c = new probe.Connection({});
  c.onopen = () => {};
  return Object.getPrototypeOf(c.join(0)).constructor;
}

test("asks the router's position before the first subscribe, so a reconnect can resume", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  n.subscribe("invoice.sent");
  const conn = ab.connections[0];
  conn.session = new (fakeSessionClass())(1);
  conn.session.position = 500;
  conn.onopen(conn.session, {});
  await settle();
  await settle();
  assert.deepEqual(conn.session.calls, ["notifyd.history.position"]);
  assert.deepEqual(conn.session.subscribes.map((x) => x.options), [{ _resume_after: 500 }]);
  // no event arrived; after a reconnect it still resumes from there
  conn.lose();
  t.mock.timers.tick(1000);
  const s2 = ab.connections[1].join(2);
  await settle();
  assert.deepEqual(s2.subscribes.map((x) => x.options), [{ _resume_after: 500 }]);
});

test("retries a resume the router could not serve just now", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab, { resumeAfter: 9 });
  const errors = [];
  n.on("error", (e) => errors.push(e));
  n.subscribe("invoice.sent");
  const conn = ab.connections[0];
  conn.session = new (fakeSessionClass())(1);
  conn.session.failures = [{ error: "notifyd.error.log_unavailable", args: ["later"] }];
  conn.onopen(conn.session, {});
  await settle();
  await settle();
  assert.equal(conn.session.subscribes.length, 1);
  t.mock.timers.tick(1000);
  await settle();
  assert.deepEqual(conn.session.subscribes.map((x) => x.options),
                   [{ _resume_after: 9 }, { _resume_after: 9 }]);
  assert.deepEqual(errors, []);
});

test("a position the router could not give now is asked again by the next session", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  n.subscribe("invoice.sent");
  const conn = ab.connections[0];
  conn.session = new (fakeSessionClass())(1);
  conn.session.positionError = "notifyd.error.log_unavailable";
  conn.onopen(conn.session, {});
  await settle();
  await settle();
  assert.deepEqual(conn.session.subscribes.map((x) => x.options), [{}]);
  conn.lose();
  t.mock.timers.tick(1000);
  const c2 = ab.connections[1];
  c2.session = new (fakeSessionClass())(2);
  c2.session.position = 40;
  c2.onopen(c2.session, {});
  await settle();
  await settle();
  assert.deepEqual(c2.session.calls, ["notifyd.history.position"]);
  assert.deepEqual(c2.session.subscribes.map((x) => x.options), [{ _resume_after: 40 }]);
});

test("an event repeated with the same message_id is shown once, its position still kept", async () => {
  const ab = fakeAutobahn();
  const n = connect(ab);
  const got = [];
  n.on("event", (e) => got.push(e.publication));
  const w = n.subscribe("invoice.sent");
  const s = ab.connections[0].join(1);
  await settle();
  const h = s.handlers["invoice.sent"];
  h([1], {}, { publication: 7, x_message_id: "m-1" });
  h([1], {}, { publication: 9, x_message_id: "m-1" }); // the log's second copy
  h([2], {}, { publication: 10, x_message_id: "m-2" });
  h([3], {}, { publication: 11 }); // no message_id: always shown
  h([3], {}, { publication: 12 });
  assert.deepEqual(got, [7, 10, 11, 12]);
  assert.equal(n._wanted[0].last, 12);
  assert.ok(w);
});

test("a revoked session (GOODBYE wamp.close.killed) does not reconnect", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const n = connect(ab);
  const states = [];
  n.on("state", (s, info) => states.push([s, info.wampReason || null]));
  n.subscribe("invoice.sent");
  ab.connections[0].join(1);
  await settle();
  ab.connections[0].lose("closed", { reason: "wamp.close.killed" });
  t.mock.timers.tick(60000);
  assert.equal(ab.connections.length, 1);
  assert.deepEqual(states.at(-1), ["closed", "wamp.close.killed"]);
});
