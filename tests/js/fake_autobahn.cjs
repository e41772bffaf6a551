// A fake Autobahn|JS for notifyd.js's unit tests: connections that the test
// opens (join), loses (lose) and closes, sessions that record subscribes,
// unsubscribes and calls.
"use strict";

function fakeAutobahn() {
  const connections = [];
  class Session {
    constructor(id) {
      this.id = id;
      this.subscribes = [];
      this.unsubscribes = [];
      this.handlers = {};
    }
    subscribe(topic, handler, options) {
      this.subscribes.push({ topic, options });
      const sub = { id: this.subscribes.length * 100 + this.id, topic };
      this.handlers[topic] = handler;
      const fail = this.failures && this.failures.shift();
      return fail ? Promise.reject(fail) : Promise.resolve(sub);
    }
    unsubscribe(sub) {
      this.unsubscribes.push(sub.topic);
      return Promise.resolve(true);
    }
    call(procedure, args) {
      this.calls = (this.calls || []).concat([procedure]);
      this.callArgs = (this.callArgs || []).concat([[procedure, args]]);
      if (procedure === "notifyd.presence.state") return Promise.resolve(true);
      // a router without history (set .position to answer like one with it,
      // .positionError to fail)
      if (this.positionError) return Promise.reject({ error: this.positionError });
      return this.position === undefined
        ? Promise.reject({ error: "wamp.error.no_such_procedure" })
        : Promise.resolve(this.position);
    }
  }
  class Connection {
    constructor(options) {
      this.options = options;
      this.opened = 0;
      this.closed = 0;
      connections.push(this);
    }
    open() { this.opened += 1; }
    close() { this.closed += 1; this.onclose("closed", { reason: "wamp.close.normal" }); }
    // test helpers
    // props: set on the session before onopen (position: the router's
    // history position, failures: errors for the next subscribes)
    join(id, props) {
      this.session = Object.assign(new Session(id), props || {});
      this.onopen(this.session, {});
      return this.session;
    }
    lose(reason, details) { return this.onclose(reason || "lost", details || {}); }
  }
  const serializer = {
    JSONSerializer: function () { this.SERIALIZER_ID = "json"; },
    MsgpackSerializer: function () { this.SERIALIZER_ID = "msgpack"; },
    CBORSerializer: function () { this.SERIALIZER_ID = "cbor"; },
  };
  return { Connection, serializer, connections };
}

module.exports = { fakeAutobahn };
