// Unit tests of notifyd.js's Hub (the host of the session shared by all
// tabs) with a fake Autobahn|JS and fake tabs: reference-counted
// subscriptions, routing, one toast per event in the visible tab, catch-up
// of a joining tab, hand-over from the oldest position, tickets and logout.
// Run with: node --test tests/js/
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const NotifyD = require("../../web/notifyd.js");

const { fakeAutobahn } = require("./fake_autobahn.cjs");

const settle = () => new Promise((r) => setImmediate(r));

function hub(t) {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const ab = fakeAutobahn();
  const sent = []; // [tab or null, message]
  const h = new NotifyD.Hub((tab, msg) => sent.push([tab, msg]), { autobahn: ab });
  const to = (tab, type) => sent.filter(([t, m]) => (t === tab || t === null) && m.t === type).map(([, m]) => m);
  return { h, ab, sent, to };
}

const OPTIONS = { url: "ws://example.test/ws", backoff: { initial: 1, spread: 0, jitter: 0 } };

function hello(h, tab, subs, extra) {
  h.receive({ t: "hello", tab, options: OPTIONS, visible: false, focusedAt: 0, subs: subs || [], ...extra });
}

function sub(sid, topic, match, extra) {
  return { sid, topic, match: match || "exact", toast: true, retained: false, resumeAfter: null, ...extra };
}

async function live(t, env) {
  hello(env.h, "A", [sub("a1", "invoice.", "prefix")]);
  t.mock.timers.tick(300); // the Hub's gathering window
  const session = env.ab.connections[0].join(7);
  await settle();
  return session;
}

test("one subscription per topic and match, whatever the number of tabs", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  hello(env.h, "B", [sub("b1", "invoice.", "prefix"), sub("b2", "client.created")]);
  await settle();
  assert.deepEqual(session.subscribes.map((s) => s.topic), ["invoice.", "client.created"]);
  env.h.receive({ t: "unsub", tab: "A", sid: "a1" });
  t.mock.timers.tick(2000);
  await settle();
  assert.deepEqual(session.unsubscribes, []); // B still wants it
  env.h.receive({ t: "bye", tab: "B" });
  await settle();
  assert.deepEqual(session.unsubscribes, []); // a moment later
  t.mock.timers.tick(2000);
  await settle();
  assert.deepEqual(session.unsubscribes.sort(), ["client.created", "invoice."]);
  assert.deepEqual(env.to(null, "tabs").map((m) => m.count), [1, 2, 1]);
});

test("each tab gets the events of its own subscriptions; one toast, in the visible tab focused last", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  hello(env.h, "B", [sub("b1", "invoice.sent")], { visible: true, focusedAt: 5 });
  hello(env.h, "C", [sub("c1", "invoice.", "prefix")], { visible: true, focusedAt: 9 });
  await settle();
  session.handlers["invoice."]([{ n: 1 }], {}, { publication: 10, topic: "invoice.sent" });
  session.handlers["invoice.sent"]([{ n: 1 }], {}, { publication: 10 });
  const events = env.sent.filter(([, m]) => m.t === "event");
  assert.deepEqual(
    events.map(([tab, m]) => [tab, m.sids, m.toast]),
    [["A", ["a1"], false], ["C", ["c1"], true], ["B", ["b1"], false]],
  );
  // the same publication through a second subscription is not toasted again
  assert.equal(events.filter(([, m]) => m.toast).length, 1);
});

test("with no tab visible the toast waits for the first that becomes visible", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  hello(env.h, "B", [sub("b1", "invoice.", "prefix", { toast: false })]);
  await settle();
  session.handlers["invoice."]([{ n: 1 }], {}, { publication: 11, topic: "invoice.paid" });
  assert.equal(env.sent.filter(([, m]) => m.t === "event" && m.toast).length, 0);
  env.h.receive({ t: "vis", tab: "B", visible: true, focusedAt: 3 }); // B does not toast this subscription
  assert.deepEqual(env.to("B", "toast"), []);
  env.h.receive({ t: "vis", tab: "A", visible: true, focusedAt: 4 });
  assert.deepEqual(env.to("A", "toast").map((m) => [m.sid, m.event.publication]), [["a1", 11]]);
  env.h.receive({ t: "vis", tab: "A", visible: true, focusedAt: 5 });
  assert.equal(env.to("A", "toast").length, 1); // shown once
});

test("a tab joining a live subscription catches up from the Hub's memory, or is told of a gap", async (t) => {
  const env = hub(t);
  env.h.receive({ t: "hello", tab: "A", options: OPTIONS, subs: [sub("a1", "t.x", "exact", { resumeAfter: 100 })] });
  t.mock.timers.tick(300);
  const session = env.ab.connections[0].join(7);
  await settle();
  assert.equal(session.subscribes[0].options._resume_after, 100);
  for (const p of [101, 105, 109]) session.handlers["t.x"]([p], {}, { publication: p });
  hello(env.h, "B", [sub("b1", "t.x", "exact", { resumeAfter: 104 })]);
  assert.deepEqual(env.to("B", "event").map((m) => m.event.publication), [105, 109]);
  hello(env.h, "C", [sub("c1", "t.x", "exact", { resumeAfter: 50 })]); // before what the Hub knows
  assert.deepEqual(env.to("C", "event"), []);
  assert.deepEqual(env.to("C", "gap").map((m) => [m.sid, m.info.requested]), [["c1", 50]]);
});

test("a new host resumes every subscription from the oldest position any tab saw", async (t) => {
  const env = hub(t);
  hello(env.h, "A", [sub("a1", "t.x", "exact", { resumeAfter: 120 })]);
  hello(env.h, "B", [sub("b1", "t.x", "exact", { resumeAfter: 90 })]);
  hello(env.h, "C", [sub("c1", "t.x", "exact", { resumeAfter: 130 })]);
  t.mock.timers.tick(300);
  const session = env.ab.connections[0].join(7);
  await settle();
  assert.equal(session.subscribes.length, 1);
  assert.equal(session.subscribes[0].options._resume_after, 90);
});

test("the session asks a tab for its ticket; a tab's logout ends it for every tab", async (t) => {
  const env = hub(t);
  hello(env.h, "A", [], { options: { ...OPTIONS, hasTicket: true }, focusedAt: 2 });
  hello(env.h, "B", [], { options: { ...OPTIONS, hasTicket: true }, focusedAt: 8 });
  const conn = env.ab.connections[0];
  const answer = conn.options.onchallenge(null, "ticket");
  const asked = env.to("B", "ticket?"); // the tab focused last
  assert.equal(asked.length, 1);
  env.h.receive({ t: "ticket", tab: "B", id: asked[0].id, value: "jwt-1" });
  assert.equal(await answer, "jwt-1");
  const again = conn.options.onchallenge(null, "ticket");
  env.h.receive({ t: "ticket", tab: "B", id: env.to("B", "ticket?")[1].id, error: "logged out" });
  await assert.rejects(again, /logged out/);
  assert.deepEqual(env.to(null, "closed").map((m) => m.reason), ["logged out"]);
  // a tab of the closed session cannot bring it back
  env.h.receive({ t: "vis", tab: "A", visible: true, focusedAt: 9 });
  hello(env.h, "A", [], { closed: true });
  assert.equal(env.ab.connections.length, 1);
  // a fresh tab (a new login) starts a new session
  hello(env.h, "C", [sub("c1", "invoice.sent")]);
  t.mock.timers.tick(300);
  const again2 = env.ab.connections[1].join(8);
  await settle();
  assert.deepEqual(again2.subscribes.map((x) => x.topic), ["invoice.sent"]);
});

test("disconnect() in one tab closes the shared session for all", async (t) => {
  const env = hub(t);
  await live(t, env);
  env.h.receive({ t: "close", tab: "A", reason: "closed by a tab" });
  assert.equal(env.ab.connections[0].closed, 1);
  assert.deepEqual(env.to(null, "closed").map((m) => m.reason), ["closed by a tab"]);
});

test("the browser is as present as its most present tab", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  const said = () => (session.callArgs || [])
    .filter(([p]) => p === "notifyd.presence.state").map(([, a]) => a[0]);
  env.h.receive({ t: "vis", tab: "A", visible: false, focusedAt: 1, state: "hidden" });
  await settle();
  hello(env.h, "B", [], { state: "idle" });
  await settle();
  env.h.receive({ t: "vis", tab: "B", visible: true, focusedAt: 2, state: "active" });
  await settle();
  env.h.receive({ t: "vis", tab: "B", visible: true, focusedAt: 2, state: "active" }); // no change
  env.h.receive({ t: "bye", tab: "B" });
  await settle();
  assert.deepEqual(said(), ["hidden", "idle", "active", "hidden"]);
});

test("a re-subscribe right after the last unsubscribe keeps the server subscription", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  env.h.receive({ t: "unsub", tab: "A", sid: "a1" });
  env.h.receive({ t: "sub", tab: "A", sub: sub("a2", "invoice.", "prefix") });
  t.mock.timers.tick(5000);
  await settle();
  assert.deepEqual(session.subscribes.map((x) => x.topic), ["invoice."]);
  assert.deepEqual(session.unsubscribes, []);
  session.handlers["invoice."]([1], {}, { publication: 3, topic: "invoice.sent" });
  assert.deepEqual(env.to("A", "event").map((m) => m.sids), [["a2"]]);
});

test("SUBSCRIBED tells the tabs where the subscription started; catch-up counts from there", async (t) => {
  const env = hub(t);
  hello(env.h, "A", [sub("a1", "t.x")]);
  t.mock.timers.tick(300);
  // the router's position when it subscribed: 100
  const session = env.ab.connections[0].join(7, { position: 100 });
  await settle();
  await settle();
  const confirmed = env.to("A", "subscribed");
  assert.equal(confirmed.length, 1);
  assert.equal(confirmed[0].info.position, 100);
  for (const p of [106, 110]) session.handlers["t.x"]([p], {}, { publication: p });
  hello(env.h, "B", [sub("b1", "t.x", "exact", { resumeAfter: 105 })]);
  assert.deepEqual(env.to("B", "gap"), []);
  assert.deepEqual(env.to("B", "event").map((m) => m.event.publication), [106, 110]);
});

test("a tab the Hub does not know is asked to say hello; hostile messages break nothing", async (t) => {
  const env = hub(t);
  await live(t, env);
  env.h.receive({ t: "vis", tab: "Z", visible: true, focusedAt: 1 });
  assert.deepEqual(env.to("Z", "hello?").length, 1);
  for (const bad of [null, 5, {}, { t: "sub", tab: "A" }, { t: "sub", tab: "A", sub: { sid: 1 } },
    { t: "hello", tab: "Y", subs: [null, 7] }, { t: "hello", tab: "__proto__" }, { t: "publish", tab: "Q" }]) {
    env.h.receive(bad);
  }
  assert.equal(Object.prototype.visible, undefined);
  env.h.receive({ t: "sub", tab: "A", sub: sub("a9", "client.created") });
  await settle();
  assert.ok(env.ab.connections[0].session.subscribes.some((x) => x.topic === "client.created"));
});

test("retained events reach exactly the tabs that asked, also tabs that join later", async (t) => {
  const env = hub(t);
  const session = await live(t, env);
  assert.equal(session.subscribes[0].options.get_retained, true); // asked once, for all tabs
  session.handlers["invoice."]([{ r: 1 }], {}, { publication: 900, topic: "invoice.sent", retained: true });
  assert.deepEqual(env.to("A", "event"), []); // A did not ask
  hello(env.h, "B", [sub("b1", "invoice.", "prefix", { retained: true })]);
  assert.deepEqual(env.to("B", "event").map((m) => [m.sids, m.event.retained, m.toast]), [[["b1"], true, false]]);
  hello(env.h, "C", [sub("c1", "invoice.", "prefix")]);
  assert.deepEqual(env.to("C", "event"), []);
  session.handlers["invoice."]([{ n: 2 }], {}, { publication: 5, topic: "invoice.paid" });
  assert.deepEqual(env.sent.filter(([, m]) => m.t === "event" && m.event.publication === 5).map(([tab]) => tab).sort(), ["A", "B", "C"]);
});
