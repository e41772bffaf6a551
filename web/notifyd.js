/*
 * notifyd.js — a small drop-in client for notifyd, on top of Autobahn|JS.
 *
 *   <script src="/vendor/autobahn.min.js"></script>
 *   <script src="/notifyd.js"></script>
 *   <script>
 *     const notifier = NotifyD.connect();            // this page's origin, /ws
 *     notifier.subscribe("invoice.", { match: "prefix" });
 *     notifier.on("state", (state) => console.log(state));
 *   </script>
 *
 * What it does:
 * - connects to ws(s)://<this page's host>/ws unless `url` is given (a list
 *   of URLs is tried in turn);
 * - keeps a list of wanted subscriptions and (re-)subscribes them every time
 *   a session opens, so a reconnect needs nothing from the app;
 * - reconnects with exponential backoff and jitter after any loss, including
 *   a router GOODBYE (wamp.close.system_shutdown) on which Autobahn|JS alone
 *   would give up;
 * - resumes: when notifyd keeps an event log for a topic, a re-subscribe
 *   after a reconnect asks for every event after the last one received
 *   (SUBSCRIBE option `_resume_after`), so nothing published while the page
 *   was offline is lost or repeated; if the log no longer reaches back that
 *   far, a "gap" event says so (reload your state there).  `resumeAfter`
 *   (the position your backend embedded in the page) covers the time
 *   between page render and the first connect;
 * - reports the connection state: "connecting", "live", "reconnecting",
 *   "closed";
 * - renders events as accessible toasts (role="status", dismissable with the
 *   close button or Escape, auto-hiding, at most `toasts.max` at once), with
 *   a renderer per subscription or a default one.
 *
 * Works in browsers (global `NotifyD`, needs the global `autobahn` from
 * npm's autobahn-browser) and in Node (module.exports; pass `autobahn`).
 * See web/README.md for the whole API.
 */
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.NotifyD = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var STATES = ["connecting", "live", "reconnecting", "closed"];
  // message ids remembered per subscription to drop repeated events
  var SEEN_IDS = 1000;
  // publication ids below this are event-log positions (see docs/history.md)
  var LOG_ID_LIMIT = Math.pow(2, 51);
  var NOT_RECOVERED = "notifyd.error.not_recovered";
  var NO_HISTORY = "notifyd.error.history_unavailable";
  var LOG_UNAVAILABLE = "notifyd.error.log_unavailable";
  var NO_PROCEDURE = "wamp.error.no_such_procedure";

  function defaultUrl() {
    if (typeof location === "undefined") {
      throw new Error("NotifyD: no page origin here; pass options.url");
    }
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws";
  }

  function pickSerializers(ab, names) {
    var table = {
      json: function () { return new ab.serializer.JSONSerializer(); },
      msgpack: function () { return new ab.serializer.MsgpackSerializer(); },
      cbor: function () { return new ab.serializer.CBORSerializer(); },
    };
    return names.map(function (name) {
      if (!table[name]) {
        throw new Error("NotifyD: unknown serializer " + name);
      }
      return table[name]();
    });
  }

  /* Default rendering: the topic as title, a short text of the payload. */
  function defaultRender(event) {
    var value = event.args && event.args.length === 1 ? event.args[0] : event.args;
    var text;
    if (value === null || value === undefined) {
      text = "";
    } else if (typeof value === "string") {
      text = value;
    } else {
      try { text = JSON.stringify(value); } catch (e) { text = String(value); }
    }
    if (text.length > 160) { text = text.slice(0, 157) + "…"; }
    return { title: event.topic, body: text };
  }

  /* ---- toasts ---------------------------------------------------------- */

  function Toaster(options) {
    this.max = options.max || 4;
    this.timeout = options.timeout === undefined ? 6000 : options.timeout;
    this.doc = options.document || (typeof document !== "undefined" ? document : null);
    this.container = options.container || null;
    this.injectStyles = options.styles !== false;
  }

  Toaster.prototype._ensure = function () {
    var doc = this.doc;
    if (this.container || !doc) { return this.container; }
    if (this.injectStyles && !doc.getElementById("notifyd-toast-styles")) {
      var style = doc.createElement("style");
      style.id = "notifyd-toast-styles";
      style.textContent = [
        ".notifyd-toasts{position:fixed;right:1rem;bottom:1rem;display:flex;flex-direction:column;",
        "gap:.5rem;z-index:2147483000;max-width:min(24rem,calc(100vw - 2rem));font:14px/1.4 system-ui,sans-serif}",
        ".notifyd-toast{display:flex;gap:.75rem;align-items:flex-start;background:#1f2933;color:#f5f7fa;",
        "border-left:4px solid #3ebd93;border-radius:6px;padding:.75rem .75rem .75rem 1rem;",
        "box-shadow:0 6px 20px rgba(0,0,0,.25)}",
        ".notifyd-toast[data-level=warning]{border-left-color:#f7c948}",
        ".notifyd-toast[data-level=error]{border-left-color:#ef4e4e}",
        ".notifyd-toast:focus-within,.notifyd-toast:focus{outline:2px solid #7cc4fa;outline-offset:2px}",
        ".notifyd-toast-text{flex:1;min-width:0}",
        ".notifyd-toast-title{font-weight:600;margin:0 0 .15rem}",
        ".notifyd-toast-body{margin:0;overflow-wrap:anywhere}",
        ".notifyd-toast-close{background:none;border:0;color:inherit;font-size:1.25rem;line-height:1;",
        "cursor:pointer;padding:.1rem .3rem;border-radius:4px}",
        ".notifyd-toast-close:focus-visible{outline:2px solid #7cc4fa}",
        "@media (prefers-reduced-motion:no-preference){.notifyd-toast{animation:notifyd-in .18s ease-out}}",
        "@keyframes notifyd-in{from{opacity:0;transform:translateY(.5rem)}to{opacity:1;transform:none}}",
      ].join("");
      doc.head.appendChild(style);
    }
    var box = doc.createElement("div");
    box.className = "notifyd-toasts";
    box.setAttribute("aria-live", "polite");
    box.setAttribute("aria-label", "Notifications");
    doc.body.appendChild(box);
    this.container = box;
    return box;
  };

  Toaster.prototype.show = function (content) {
    var box = this._ensure();
    if (!box) { return null; }
    var doc = this.doc;
    var toast = doc.createElement("div");
    toast.className = "notifyd-toast";
    toast.setAttribute("role", "status");
    toast.tabIndex = -1;
    if (content.level) { toast.setAttribute("data-level", content.level); }
    if (content.topic) { toast.setAttribute("data-topic", content.topic); }
    var text = doc.createElement("div");
    text.className = "notifyd-toast-text";
    var title = doc.createElement("p");
    title.className = "notifyd-toast-title";
    title.textContent = content.title || "";
    var body = doc.createElement("p");
    body.className = "notifyd-toast-body";
    body.textContent = content.body || "";
    text.appendChild(title);
    text.appendChild(body);
    var close = doc.createElement("button");
    close.type = "button";
    close.className = "notifyd-toast-close";
    close.setAttribute("aria-label", "Dismiss notification");
    close.textContent = "×";
    toast.appendChild(text);
    toast.appendChild(close);

    var self = this;
    var timer = null;
    function dismiss() {
      if (timer) { clearTimeout(timer); timer = null; }
      if (toast.parentNode) { toast.parentNode.removeChild(toast); }
    }
    function arm() {
      if (self.timeout > 0) { timer = setTimeout(dismiss, self.timeout); }
    }
    close.addEventListener("click", dismiss);
    toast.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { dismiss(); }
    });
    // pause auto-hide while the user looks at or works in the toast
    toast.addEventListener("mouseenter", function () { if (timer) { clearTimeout(timer); timer = null; } });
    toast.addEventListener("mouseleave", function () { if (!timer && toast.parentNode) { arm(); } });
    toast.addEventListener("focusin", function () { if (timer) { clearTimeout(timer); timer = null; } });

    box.appendChild(toast);
    while (box.children.length > this.max) {
      box.removeChild(box.firstChild);
    }
    arm();
    return { element: toast, dismiss: dismiss };
  };

  /*
   * Autobahn|JS (22.x and 26.x) answers a router's GOODBYE by queueing its
   * GOODBYE reply behind an async serializer and then closing the WebSocket
   * synchronously, so the reply is written to a closing socket (the browser
   * logs "WebSocket is already in CLOSING or CLOSED state") and never reaches
   * the router.  Closing one macrotask later lets the reply go out first.
   */
  function deferTransportClose(conn) {
    var transport = conn._transport;
    if (!transport || typeof transport.close !== "function" || transport.__notifydDeferred) {
      return;
    }
    var close = transport.close;
    transport.close = function () {
      var args = arguments;
      var that = this;
      setTimeout(function () { close.apply(that, args); }, 0);
    };
    transport.__notifydDeferred = true;
  }

  /* ---- the client ------------------------------------------------------- */

  function Notifier(options) {
    options = options || {};
    var ab = options.autobahn || (typeof autobahn !== "undefined" ? autobahn : null); // eslint-disable-line no-undef
    if (!ab) {
      throw new Error("NotifyD: Autobahn|JS is not loaded (include autobahn.min.js first)");
    }
    this._ab = ab;
    this.options = options;
    // several URLs (nodes without a load balancer in front): each connect
    // attempt takes the next one
    this._urls = Array.isArray(options.url) ? options.url.slice() : [options.url || defaultUrl()];
    this._urlIndex = 0;
    this.url = this._urls[0];
    this.realm = options.realm || "realm1";
    var ser = options.serializers || [options.serializer || "json"];
    this._serializerNames = ser;
    var backoff = options.backoff || {};
    this._backoff = {
      initial: backoff.initial || 0.5,
      max: backoff.max || 30,
      growth: backoff.growth || 1.7,
      jitter: backoff.jitter === undefined ? 0.2 : backoff.jitter,
      // the first retry after a live connection is lost waits initial plus a
      // random share of this many seconds: when a node dies, its browsers
      // arrive at the others spread out, not in lockstep
      spread: backoff.spread === undefined ? 3 : backoff.spread,
    };
    this._wasLive = false;
    this._delay = this._backoff.initial;
    this._listeners = {};
    this._wanted = []; // {topic, options, handle, sub}
    this._session = null;
    this._connection = null;
    this._closing = false;
    this._timer = null;
    this._everLive = false;
    this.state = null;
    this.reconnects = 0;
    var toasts = options.toasts === undefined ? true : options.toasts;
    this._toaster = toasts ? new Toaster(toasts === true ? {} : toasts) : null;
    this._render = options.render || defaultRender;
    this._open();
  }

  Notifier.prototype.on = function (name, fn) {
    (this._listeners[name] = this._listeners[name] || []).push(fn);
    if (name === "state" && this.state) { fn(this.state, {}); }
    return this;
  };

  Notifier.prototype.off = function (name, fn) {
    var list = this._listeners[name] || [];
    var i = list.indexOf(fn);
    if (i >= 0) { list.splice(i, 1); }
    return this;
  };

  Notifier.prototype._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._listeners[name] || []).slice().forEach(function (fn) {
      try { fn.apply(null, args); } catch (e) {
        if (typeof console !== "undefined") { console.error("NotifyD listener failed:", e); }
      }
    });
  };

  Notifier.prototype._setState = function (state, info) {
    if (STATES.indexOf(state) < 0 || state === this.state) { return; }
    this.state = state;
    this._emit("state", state, info || {});
  };

  Notifier.prototype._open = function () {
    var self = this;
    var ab = this._ab;
    this._setState(this._everLive ? "reconnecting" : "connecting");
    var opts = this.options;
    var ticket = opts.ticket;
    this.url = this._urls[this._urlIndex % this._urls.length];
    this._urlIndex += 1;
    var conn = new ab.Connection({
      url: this.url,
      realm: this.realm,
      serializers: pickSerializers(ab, this._serializerNames),
      authmethods: opts.authmethods || (ticket ? ["ticket"] : undefined),
      authid: opts.authid,
      // a ticket may be a string or a function returning one (or a promise
      // of one): it is asked for on every (re)connect, so a fresh token can
      // be fetched from the app's backend when the old one has expired
      onchallenge: opts.onchallenge || (ticket ? function (session, method) {
        if (method !== "ticket") { throw new Error("NotifyD: unexpected challenge " + method); }
        return typeof ticket === "function" ? ticket() : ticket;
      } : undefined),
      max_retries: 0, // notifyd.js does the retrying (see _closed)
      retry_if_unreachable: false,
    });
    this._connection = conn;
    conn.onopen = function (session) {
      if (conn !== self._connection) { return; }
      self._session = session;
      self._position = null; // asked once per session, when needed
      deferTransportClose(conn);
      self._delay = self._backoff.initial;
      self._wasLive = true;
      if (self._everLive) { self.reconnects += 1; }
      self._everLive = true;
      self._setState("live", { session: session.id, reconnects: self.reconnects });
      self._wanted.forEach(function (w) { self._subscribeOne(w); });
    };
    conn.onclose = function (reason, details) {
      if (conn !== self._connection) { return true; }
      self._session = null;
      self._wanted.forEach(function (w) { w.sub = null; });
      self._closed(reason, details || {});
      return true; // stop Autobahn's own retrying: we do it
    };
    conn.open();
  };

  Notifier.prototype._closed = function (reason, details) {
    var self = this;
    if (details && details.reason === "wamp.close.killed") {
      // the backend ended this user's sessions (revocation): stay off
      this._closing = true;
      this._emit("disconnect", { reason: reason, wampReason: details.reason, retryIn: null });
      this._setState("closed", { reason: reason, wampReason: details.reason });
      return;
    }
    if (this._closing) {
      this._setState("closed", { reason: reason });
      return;
    }
    var b = this._backoff;
    var delay = this._delay;
    if (this._wasLive && b.spread) {
      // a live session just ended (a node died or shut down): spread the
      // reconnects of all its browsers over b.spread seconds
      delay = delay + Math.random() * b.spread;
    } else if (b.jitter) {
      delay = delay * (1 + (Math.random() * 2 - 1) * b.jitter);
    }
    this._wasLive = false;
    this._delay = Math.min(this._delay * b.growth, b.max);
    this._setState(this._everLive ? "reconnecting" : "connecting", {
      reason: reason,
      wampReason: details.reason || null,
      retryIn: delay,
    });
    this._emit("disconnect", { reason: reason, wampReason: details.reason || null, retryIn: delay });
    this._timer = setTimeout(function () {
      self._timer = null;
      if (!self._closing) { self._open(); }
    }, delay * 1000);
  };

  /* The router's newest log position, asked once per session: a subscription
   * that has no position yet starts from it, so that even before its first
   * event a reconnect can resume (nothing published meanwhile is lost). */
  Notifier.prototype._positionNow = function (session) {
    if (!this._position) {
      this._position = session.call("notifyd.history.position").then(function (p) {
        return { position: typeof p === "number" ? p : null, error: null };
      }, function (err) {
        return { position: null, error: err && err.error ? err.error : String(err) };
      });
    }
    return this._position;
  };

  Notifier.prototype._subscribeOne = function (w) {
    var self = this;
    var session = this._session;
    if (!session) { return; }
    if (!w.noResume && w.last === null && w.resumeAfter === null && w.askedIn !== session) {
      w.askedIn = session; // asked once per session (again after a reconnect)
      this._positionNow(session).then(function (r) {
        if (session !== self._session) { return; } // a late answer for an old session
        if (r.position !== null && w.last === null && w.resumeAfter === null) {
          w.resumeAfter = r.position;
        } else if (r.error === NO_HISTORY || r.error === NO_PROCEDURE) {
          w.noResume = true; // this router keeps no history
        }
        // anything else (the log unreachable just now): subscribe plainly
        // this time; the next session asks again
        if (self._wanted.indexOf(w) >= 0) { self._subscribeOne(w); }
      });
      return;
    }
    var opts = {};
    if (w.options.match && w.options.match !== "exact") { opts.match = w.options.match; }
    var resume = w.noResume ? null : (w.last !== null ? w.last : w.resumeAfter);
    if (resume !== null && resume !== undefined) {
      opts._resume_after = resume;
    }
    if (w.options.retained && !w.gotRetained) {
      // with a resume, notifyd sends the retained events before the replay
      opts.get_retained = true;
    }
    session.subscribe(w.topic, function (args, kwargs, details) {
      self._deliver(w, args, kwargs, details);
    }, opts).then(function (sub) {
      if (session !== self._session || self._wanted.indexOf(w) < 0) {
        // the session went away or the app unsubscribed meanwhile
        if (session === self._session) { session.unsubscribe(sub).then(null, function () {}); }
        return;
      }
      w.sub = sub;
      w.retryDelay = 0;
      if (opts.get_retained) { w.gotRetained = true; }
      self._emit("subscribed", {
        topic: w.topic,
        match: w.options.match || "exact",
        id: sub.id,
        resumed: opts._resume_after !== undefined,
      });
    }, function (err) {
      var uri = err && err.error ? err.error : String(err);
      if (session === self._session && opts._resume_after !== undefined) {
        if (uri === LOG_UNAVAILABLE) {
          // the router cannot read its log just now: try the resume again
          w.retryDelay = Math.min((w.retryDelay || 0.5) * 2, 30);
          setTimeout(function () {
            if (session === self._session && self._wanted.indexOf(w) >= 0) { self._subscribeOne(w); }
          }, w.retryDelay * 1000);
          return;
        }
        if (uri === NO_HISTORY) {
          // this topic keeps no history: plain subscriptions from now on
          w.noResume = true;
          self._subscribeOne(w);
          return;
        }
        if (uri === NOT_RECOVERED) {
          // the log no longer reaches back that far: say so, then go on from
          // the newest position (so nothing later is missed as well)
          var info = err.kwargs || {};
          self._emit("gap", {
            topic: w.topic,
            subscription: w.handle,
            requested: opts._resume_after,
            first: info.first === undefined ? null : info.first,
            position: info.position === undefined ? null : info.position,
          });
          w.last = null;
          w.resumeAfter = typeof info.position === "number" ? info.position : null;
          self._subscribeOne(w);
          return;
        }
      }
      self._emit("error", {
        topic: w.topic,
        error: uri,
        message: err && err.args ? err.args[0] : undefined,
      });
    });
  };

  Notifier.prototype._deliver = function (w, args, kwargs, details) {
    var pub = details.publication;
    if (!details.retained && typeof pub === "number" && pub < LOG_ID_LIMIT) {
      w.last = pub; // a log position: where a resume starts
    }
    // an event the log holds twice (a writer died before its ack; see
    // docs/history.md) has the same message_id: show it once
    var mid = details.x_message_id;
    if (typeof mid === "string" && mid) {
      var seen = w.seen || (w.seen = { ids: {}, order: [] });
      if (seen.ids[mid]) { return; }
      seen.ids[mid] = true;
      seen.order.push(mid);
      if (seen.order.length > SEEN_IDS) { delete seen.ids[seen.order.shift()]; }
    }
    var event = {
      topic: details.topic || w.topic,
      args: args || [],
      kwargs: kwargs || {},
      publication: details.publication,
      publisher: details.publisher,
      retained: !!details.retained,
      subscription: w.handle,
      receivedAt: new Date(),
    };
    if (w.options.onEvent) {
      try { w.options.onEvent(event); } catch (e) {
        if (typeof console !== "undefined") { console.error("NotifyD onEvent failed:", e); }
      }
    }
    this._emit("event", event);
    var toast = w.options.toast === undefined ? true : w.options.toast;
    if (this._toaster && toast) {
      var render = w.options.render || this._render;
      var content = render(event);
      if (content) {
        content.topic = event.topic;
        this._toaster.show(content);
      }
    }
  };

  /**
   * Subscribe to a topic or pattern. Options: match ("exact" | "prefix" |
   * "wildcard"), render(event) → {title, body, level} | null, onEvent(event),
   * toast (false to only get events), retained (true: get the topic's
   * retained event on the first subscribe), resumeAfter (a log position:
   * deliver every event after it first; default: the connect option).
   * Returns a handle with unsubscribe() and position() (the last log
   * position received, or null).
   */
  Notifier.prototype.subscribe = function (topic, options) {
    var self = this;
    if (typeof options === "function") { options = { onEvent: options }; }
    options = options || {};
    var resumeAfter = options.resumeAfter !== undefined ? options.resumeAfter : this.options.resumeAfter;
    var w = {
      topic: topic,
      options: options,
      sub: null,
      handle: null,
      last: null,
      resumeAfter: typeof resumeAfter === "number" ? resumeAfter : null,
      noResume: options.resume === false,
      askedIn: null,
      retryDelay: 0,
      gotRetained: false,
    };
    w.handle = {
      topic: topic,
      match: w.options.match || "exact",
      unsubscribe: function () { return self._unsubscribe(w); },
      position: function () { return w.last !== null ? w.last : w.resumeAfter; },
    };
    this._wanted.push(w);
    this._subscribeOne(w);
    return w.handle;
  };

  Notifier.prototype._unsubscribe = function (w) {
    var i = this._wanted.indexOf(w);
    if (i >= 0) { this._wanted.splice(i, 1); }
    var sub = w.sub;
    w.sub = null;
    if (sub && this._session) {
      return this._session.unsubscribe(sub).then(function () { return true; }, function () { return false; });
    }
    return Promise.resolve(true);
  };

  Notifier.prototype.subscriptions = function () {
    return this._wanted.map(function (w) { return w.handle; });
  };

  /** Show a toast of your own: {title, body, level}. */
  Notifier.prototype.toast = function (content) {
    return this._toaster ? this._toaster.show(content) : null;
  };

  /** Publish (if the server allows it for this topic). */
  Notifier.prototype.publish = function (topic, args, kwargs, options) {
    if (!this._session) { return Promise.reject(new Error("not connected")); }
    return this._session.publish(topic, args || [], kwargs || {}, options || { acknowledge: true });
  };

  /** Close for good (no reconnect). */
  Notifier.prototype.close = function () {
    this._closing = true;
    if (this._timer) { clearTimeout(this._timer); this._timer = null; }
    var conn = this._connection;
    if (conn && this._session) {
      conn.close();
    } else {
      this._setState("closed", {});
    }
  };

  return {
    connect: function (options) { return new Notifier(options); },
    Notifier: Notifier,
    Toaster: Toaster,
    defaultRender: defaultRender,
    version: "0.1.0",
  };
});
