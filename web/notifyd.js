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
  var PRESENCE_OFF = "notifyd.error.presence_off";
  var RECEIPTS_OFF = "notifyd.error.receipts_off";
  // how present a browser is, best first (reported with notifyd.presence.state)
  var PRESENCE_ORDER = { active: 0, idle: 1, hidden: 2 };

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
    // a toast counts as seen (a "displayed" receipt) after this long on
    // screen in a visible page
    this.seenAfter = options.seenAfter === undefined ? 1000 : options.seenAfter;
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

  /* Is the page visible (Page Visibility; true where it is unknown)? */
  function pageVisible(doc) {
    return !doc || !doc.visibilityState || doc.visibilityState === "visible";
  }

  /* Show a toast; onSeen() is called once it was on screen in a visible
   * page for `seenAfter` ms (now, or once the page becomes visible while the
   * toast is still there).  The auto-hide timer runs only while the page is
   * visible. */
  Toaster.prototype.show = function (content, onSeen) {
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
    var seenTimer = null;
    var listening = !!doc.addEventListener;
    function dismiss() {
      if (timer) { clearTimeout(timer); timer = null; }
      if (seenTimer) { clearTimeout(seenTimer); seenTimer = null; }
      if (listening) { doc.removeEventListener("visibilitychange", visibility); listening = false; }
      if (toast.parentNode) { toast.parentNode.removeChild(toast); }
    }
    function arm() {
      if (self.timeout > 0 && pageVisible(doc)) { timer = setTimeout(dismiss, self.timeout); }
    }
    function watchSeen() {
      if (!onSeen || seenTimer) { return; }
      seenTimer = setTimeout(function () {
        seenTimer = null;
        if (!onSeen || !toast.parentNode || !pageVisible(doc)) { return; }
        var fn = onSeen;
        onSeen = null;
        try { fn(); } catch (e) { /* a report must not break the page */ }
      }, self.seenAfter);
    }
    function visibility() {
      if (!toast.parentNode) { dismiss(); return; }
      if (pageVisible(doc)) {
        if (!timer) { arm(); }
        watchSeen();
      } else {
        // hidden: the toast waits for the user, and is not seen meanwhile
        if (timer) { clearTimeout(timer); timer = null; }
        if (seenTimer) { clearTimeout(seenTimer); seenTimer = null; }
      }
    }
    close.addEventListener("click", dismiss);
    toast.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { dismiss(); }
    });
    // pause auto-hide while the user looks at or works in the toast
    toast.addEventListener("mouseenter", function () { if (timer) { clearTimeout(timer); timer = null; } });
    toast.addEventListener("mouseleave", function () { if (!timer && toast.parentNode) { arm(); } });
    toast.addEventListener("focusin", function () { if (timer) { clearTimeout(timer); timer = null; } });

    toast.__notifydDismiss = dismiss;
    box.appendChild(toast);
    while (box.children.length > this.max) {
      var oldest = box.firstChild;
      if (oldest.__notifydDismiss) { oldest.__notifydDismiss(); } else { box.removeChild(oldest); }
    }
    if (listening) { doc.addEventListener("visibilitychange", visibility); }
    if (pageVisible(doc)) {
      arm();
      watchSeen();
    }
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

  /*
   * Autobahn|JS (22.x, 26.x) hands an event handler only the details it
   * knows (publication, topic, publisher, retained): notifyd's own
   * (x_message_id, x_receipt, ...; docs/protocol.md) are dropped.  This
   * wraps the session's EVENT handler to keep the raw details of the event
   * being dispatched (handlers run synchronously inside it).  Without the
   * internal map, events simply carry no notifyd details.
   */
  var EVENT = 36;
  function exposeEventDetails(session) {
    var map = session._MESSAGE_MAP;
    if (!map || typeof map[EVENT] !== "function" || map[EVENT].__notifyd) { return; }
    var original = map[EVENT];
    var wrapped = function (msg) {
      var details = msg && msg[3];
      session.__notifydEvent = details && typeof details === "object" ? { pub: msg[2], details: details } : null;
      try { return original.apply(this, arguments); } finally { session.__notifydEvent = null; }
    };
    wrapped.__notifyd = true;
    map[EVENT] = wrapped;
  }

  /* notifyd's own details of the event `details` (from exposeEventDetails;
   * a client library that passes every detail through needs no help). */
  function extraDetails(session, details) {
    var raw = session && session.__notifydEvent;
    return raw && raw.pub === details.publication ? raw.details : details;
  }

  /* The message_id a "displayed" report is for: given as is, or the id of
   * an event whose backend asked for a receipt (else undefined). */
  function receiptId(event) {
    return typeof event === "string" ? event : event && event.receipt && event.messageId;
  }

  /* ---- presence: how present the user of this page is -------------------
   * "hidden" when the page is not visible (Page Visibility), "idle" when it
   * is but there was no input for `idleAfter` seconds (default 60),
   * "active" otherwise.  onChange(state) on every change. */
  function PresenceWatch(options, onChange) {
    var idleAfter = ((options && options.idleAfter) || 60) * 1000;
    var last = Date.now();
    var state = null;
    function compute() {
      if (document.visibilityState !== "visible") { return "hidden"; }
      return Date.now() - last > idleAfter ? "idle" : "active";
    }
    function check() {
      var now = compute();
      if (now !== state) { state = now; onChange(now); }
    }
    function input() {
      last = Date.now();
      if (state !== "active") { check(); }
    }
    ["pointerdown", "keydown", "wheel", "touchstart", "mousemove", "scroll"].forEach(function (name) {
      document.addEventListener(name, input, { passive: true, capture: true });
    });
    document.addEventListener("visibilitychange", check);
    setInterval(check, Math.min(15000, idleAfter / 2));
    this.current = function () { return state || compute(); };
    check();
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
    this._presenceState = null;
    this._open();
    var self = this;
    if (options.presence !== false && !options.autobahn && typeof document !== "undefined") {
      this._presence = new PresenceWatch(options.presence, function (state) { self.reportState(state); });
    }
  }

  /* Tell the router how present the user is ("active", "idle", "hidden"):
   * forwarded to the backend when notifyd's presence is on (see
   * docs/presence.md); said again on every new session. */
  Notifier.prototype.reportState = function (state) {
    this._presenceState = state;
    var session = this._session;
    if (!session || this._presenceOff === session) { return; }
    if (this._presenceSent === state && this._presenceSentIn === session) { return; }
    this._presenceSent = state;
    this._presenceSentIn = session;
    var self = this;
    session.call("notifyd.presence.state", [state]).then(null, function (err) {
      var uri = err && err.error;
      if (uri === NO_PROCEDURE || uri === PRESENCE_OFF) { self._presenceOff = session; }
    });
  };

  /* Tell the router this event was displayed to the user (a delivery
   * receipt, docs/presence.md): done by itself for the toasts it shows in a
   * visible page; call it for events you show yourself.  Only events whose
   * backend asked for a receipt (event.receipt) are reported. */
  Notifier.prototype.displayed = function (event, session) {
    var mid = receiptId(event);
    session = session || this._session; // the session the event came in (a new one cannot report it)
    if (typeof mid !== "string" || !mid || !session || this._receiptsOff === session) {
      return;
    }
    var self = this;
    session.call("notifyd.receipt.displayed", [mid]).then(null, function (err) {
      var uri = err && err.error;
      if (uri === NO_PROCEDURE || uri === RECEIPTS_OFF) { self._receiptsOff = session; }
    });
  };

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
      exposeEventDetails(session);
      self._position = null; // asked once per session, when needed
      deferTransportClose(conn);
      self._delay = self._backoff.initial;
      self._wasLive = true;
      if (self._everLive) { self.reconnects += 1; }
      self._everLive = true;
      self._setState("live", { session: session.id, reconnects: self.reconnects });
      self._wanted.forEach(function (w) { self._subscribeOne(w); });
      if (self._presenceState) { self.reportState(self._presenceState); }
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
    var extra = extraDetails(this._session, details);
    var mid = extra.x_message_id;
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
      messageId: typeof mid === "string" ? mid : null,
      receipt: !!extra.x_receipt,
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
        var self = this;
        var session = this._session;
        this._toaster.show(content, event.receipt ? function () { self.displayed(event, session); } : null);
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

  /** Close for good; with a shared session, for every tab (a logout). */
  Notifier.prototype.disconnect = Notifier.prototype.close;

  /* ---- one session for all tabs of this origin -------------------------
   *
   * NotifyD.connect() shares one WAMP session between the tabs of a browser
   * profile and origin (same URL, realm and serializer):
   * - in a SharedWorker (notifyd-worker.js, next to notifyd.js) where the
   *   browser has them;
   * - else one tab is elected (Web Locks) and hosts it, relaying over a
   *   BroadcastChannel; when it closes, the next tab takes over and resumes
   *   from the oldest position any tab saw (each tab drops what it saw);
   * - else (or with `share: false`) each tab connects on its own.
   * The host (a Hub) holds one subscription per topic and match, counted by
   * the tabs that want it, routes each event to the tabs that subscribed,
   * and picks one tab to toast it: a visible one, the one focused last, or
   * the first to become visible.  See web/README.md.
   */

  var SHARE_PREFIX = "notifyd:";
  var RING = 500;          // events a Hub keeps per subscription to catch up a joining tab
  var PENDING_TOASTS = 50; // toasts kept for a tab that becomes visible
  var TOASTED = 2000;      // publications remembered as toasted
  var GATHER_MS = 300;     // a new Hub waits this long for the tabs before subscribing
  var PING_MS = 5000;      // tab heartbeat to a SharedWorker without Web Locks
  var SILENT_MS = 180000;  // ... which drops a tab silent this long (background
                           // tabs' timers may run once a minute)
  var WELCOME_MS = 5000;   // a SharedWorker that does not answer: fall back
  var LINGER_MS = 2000;    // the last tab's unsubscribe waits this long (a
                           // re-subscribe meanwhile keeps the subscription)
  var TICKET_MS = 10000;   // how long a Hub waits for a tab's ticket

  var SCRIPT_URL = (typeof document !== "undefined" && document.currentScript &&
    document.currentScript.src) || null;

  function newId() {
    return Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
  }

  function isLogPosition(pub) {
    return typeof pub === "number" && pub < LOG_ID_LIMIT;
  }

  function subKey(topic, match) { return (match || "exact") + " " + topic; }

  function validSub(s) {
    return !!s && typeof s === "object" && typeof s.sid === "string" &&
      typeof s.topic === "string" && (s.match === undefined || typeof s.match === "string");
  }

  /* What a Notifier needs from a tab's options, as plain data. */
  function shareableOptions(options) {
    return {
      url: options.url,
      realm: options.realm,
      serializer: options.serializer,
      serializers: options.serializers,
      authid: options.authid,
      authmethods: options.authmethods,
      backoff: options.backoff,
      hasTicket: options.ticket !== undefined,
    };
  }

  function shareName(options) {
    var urls = Array.isArray(options.url) ? options.url : [options.url || defaultUrl()];
    return SHARE_PREFIX + JSON.stringify([urls, options.realm || "realm1",
      options.serializers || [options.serializer || "json"]]);
  }

  function plainEvent(e) {
    return {
      topic: e.topic, args: e.args, kwargs: e.kwargs, publication: e.publication,
      publisher: e.publisher, retained: e.retained,
      receivedAt: e.receivedAt ? e.receivedAt.getTime() : Date.now(),
      messageId: e.messageId, receipt: e.receipt,
    };
  }

  /* A promise settled by table[id].resolve / .reject (an answer from the
   * other side), or rejected with `why` after `ms`. */
  function awaitAnswer(table, id, ms, why) {
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () {
        delete table[id];
        reject(new Error(why));
      }, ms);
      table[id] = {
        resolve: function (v) { clearTimeout(timer); delete table[id]; resolve(v); },
        reject: function (e) { clearTimeout(timer); delete table[id]; reject(e); },
      };
    });
  }

  /* Calls fn(tabId) once the tab holding its lock is gone (Web Locks). */
  function watchTab(locks, id, fn) {
    locks.request(SHARE_PREFIX + "tab:" + id, function () { fn(id); });
  }

  /* ---- the host of the shared session ---------------------------------- */

  function Hub(post, env) {
    this._post = post;           // post(tabId or null for all, message)
    this._env = env || {};       // {autobahn, locks}
    this.tabs = Object.create(null); // id -> {visible, focusedAt, hasTicket, subs: {sid: {key, toast}}, seen}
    this.keys = Object.create(null); // key -> {topic, match, refs, handle, ring, base, dropped, from, retained}
    this.core = null;
    this.state = null;
    this._info = {};
    this._toasted = { ids: {}, order: [] };
    this._pending = [];
    this._tickets = {};
    this._gathering = true;
    this._closed = null;
  }

  Hub.prototype.receive = function (m) {
    if (!m || typeof m !== "object" || typeof m.tab !== "string") { return; }
    try {
      this._receive(m);
    } catch (e) {
      if (typeof console !== "undefined") { console.error("NotifyD hub: bad message", m.t, e); }
    }
  };

  Hub.prototype._receive = function (m) {
    if (this._closed) {
      if (m.t === "hello" && !m.closed) {
        // a tab that was not part of the closed session (a new login):
        // start afresh
        this._reopen();
      } else {
        if (m.t !== "bye") { this._post(m.tab, { t: "closed", reason: this._closed }); }
        return;
      }
    }
    var tab = this.tabs[m.tab];
    if (tab) {
      tab.seen = Date.now();
    } else if (m.t !== "hello" && m.t !== "bye" && m.t !== "ticket") {
      // dropped as silent (or from before a restart): ask it to say hello
      this._post(m.tab, { t: "hello?" });
      return;
    }
    switch (m.t) {
      case "hello": this._hello(m); break;
      case "sub": if (validSub(m.sub)) { this._sub(m.tab, m.sub); } break;
      case "unsub": if (tab) { this._unsub(m.tab, m.sid); } break;
      case "vis":
        if (tab) {
          tab.visible = !!m.visible;
          tab.focusedAt = m.focusedAt || 0;
          if (m.state) { tab.state = m.state; this._reportState(); }
          if (tab.visible) { this._flushToasts(m.tab); }
        }
        break;
      case "bye": this.drop(m.tab); break;
      case "close": this.closeAll(m.reason || "closed"); break;
      case "ticket": this._ticketAnswer(m); break;
      case "publish": this._publish(m); break;
      case "displayed": if (this.core && typeof m.mid === "string") { this.core.displayed(m.mid); } break;
      default: break;
    }
  };

  Hub.prototype._hello = function (m) {
    var self = this;
    var fresh = !this.tabs[m.tab];
    var tab = this.tabs[m.tab] || { subs: Object.create(null) };
    tab.visible = !!m.visible;
    tab.focusedAt = m.focusedAt || 0;
    tab.hasTicket = !!(m.options && m.options.hasTicket);
    tab.seen = Date.now();
    if (m.state) { tab.state = m.state; }
    this.tabs[m.tab] = tab;
    if (fresh && this._env.locks) {
      watchTab(this._env.locks, m.tab, function (id) { self.drop(id); });
    }
    if (!this.core) { this._start(m.options || {}); }
    this._post(m.tab, { t: "welcome", state: this.state, info: this._info, tabs: this._count() });
    (Array.isArray(m.subs) ? m.subs : []).forEach(function (s) {
      if (validSub(s) && !tab.subs[s.sid]) { self._sub(m.tab, s); }
    });
    if (tab.visible) { this._flushToasts(m.tab); }
    this._broadcastCount();
    this._reportState();
  };

  Hub.prototype._count = function () { return Object.keys(this.tabs).length; };

  /* The browser is as present as its most present tab. */
  Hub.prototype._reportState = function () {
    var best = null;
    for (var id in this.tabs) {
      var st = this.tabs[id].state;
      if (st in PRESENCE_ORDER && (best === null || PRESENCE_ORDER[st] < PRESENCE_ORDER[best])) {
        best = st;
      }
    }
    if (best !== null && this.core) { this.core.reportState(best); }
  };

  Hub.prototype._broadcastCount = function () {
    this._post(null, { t: "tabs", count: this._count() });
  };

  Hub.prototype._start = function (opts) {
    var self = this;
    var o = {
      url: opts.url, realm: opts.realm, serializer: opts.serializer, serializers: opts.serializers,
      authid: opts.authid, authmethods: opts.authmethods, backoff: opts.backoff,
      toasts: false, autobahn: this._env.autobahn, presence: false,
    };
    if (opts.hasTicket) { o.ticket = function () { return self._askTicket(); }; }
    var core = this.core = new Notifier(o);
    core.on("state", function (state, info) {
      self.state = state;
      self._info = {
        session: info.session, reconnects: info.reconnects, reason: info.reason,
        wampReason: info.wampReason, retryIn: info.retryIn,
      };
      if (state !== "live") {
        for (var key in self.keys) { self.keys[key].confirmed = null; }
      }
      self._post(null, { t: "state", state: state, info: self._info });
    });
    core.on("disconnect", function (info) { self._post(null, { t: "disconnect", info: info }); });
    core.on("subscribed", function (info) {
      var rec = self.keys[subKey(info.topic, info.match)];
      if (rec) {
        var p = rec.handle ? rec.handle.position() : null;
        if (rec.base === null && isLogPosition(p)) { rec.base = p; }
        info = Object.assign({}, info, { position: isLogPosition(p) ? p : null });
        rec.confirmed = info;
      }
      self._toRefs(subKey(info.topic, info.match), function (tab, sid) {
        return { t: "subscribed", sid: sid, info: info };
      });
    });
    core.on("gap", function (g) {
      var rec = self._byHandle(g.subscription);
      if (!rec) { return; }
      rec.base = typeof g.position === "number" ? g.position : null;
      rec.ring = [];
      rec.dropped = null;
      var info = { topic: g.topic, requested: g.requested, first: g.first, position: g.position };
      self._toRefs(subKey(rec.topic, rec.match), function (tab, sid) {
        return { t: "gap", sid: sid, info: info };
      });
    });
    core.on("error", function (e) {
      Object.keys(self.keys).forEach(function (key) {
        if (self.keys[key].topic === e.topic) {
          self._toRefs(key, function (tab, sid) { return { t: "error", sid: sid, info: e }; });
        }
      });
    });
    // give the other tabs a moment to say hello, so that the subscriptions
    // resume from the oldest position any of them saw (a hand-over)
    setTimeout(function () {
      self._gathering = false;
      Object.keys(self.keys).forEach(function (key) { self._subscribeKey(key); });
    }, GATHER_MS);
  };

  Hub.prototype._byHandle = function (handle) {
    var keys = this.keys;
    for (var key in keys) {
      if (keys[key].handle === handle) { return keys[key]; }
    }
    return null;
  };

  Hub.prototype._toRefs = function (key, make) {
    var rec = this.keys[key];
    if (!rec) { return; }
    var self = this;
    Object.keys(rec.refs).forEach(function (ref) {
      var i = ref.indexOf("/");
      var tab = ref.slice(0, i);
      self._post(tab, make(tab, ref.slice(i + 1)));
    });
  };

  Hub.prototype._sub = function (tabId, s) {
    var tab = this.tabs[tabId];
    var key = subKey(s.topic, s.match);
    if (tab.subs[s.sid]) {
      if (tab.subs[s.sid].key === key) { return; }
      this._unsub(tabId, s.sid); // the same id for another topic
    }
    tab.subs[s.sid] = { key: key, toast: s.toast !== false, retained: !!s.retained };
    var rec = this.keys[key];
    var from = isLogPosition(s.resumeAfter) ? s.resumeAfter : null;
    if (!rec) {
      rec = this.keys[key] = {
        topic: s.topic, match: s.match || "exact", refs: {}, handle: null, ring: [],
        base: from, dropped: null, from: from, noResume: !!s.noResume,
        retainedEvents: Object.create(null), confirmed: null,
      };
      rec.refs[tabId + "/" + s.sid] = true;
      if (!this._gathering) { this._subscribeKey(key); }
      return;
    }
    rec.refs[tabId + "/" + s.sid] = true;
    if (rec.linger) { clearTimeout(rec.linger); rec.linger = null; }
    if (rec.confirmed) {
      this._post(tabId, { t: "subscribed", sid: s.sid, info: rec.confirmed });
    }
    if (!rec.handle) {
      // not subscribed yet (a new Hub gathering its tabs): start from the
      // oldest position wanted
      if (from !== null && (rec.from === null || from < rec.from)) { rec.from = rec.base = from; }
      return;
    }
    this._catchUp(tabId, s, rec);
  };

  Hub.prototype._subscribeKey = function (key) {
    var self = this;
    var rec = this.keys[key];
    if (!rec || rec.handle) { return; }
    var opts = {
      // always: a tab that asks for the retained events later gets them
      // from here (they reach only the tabs that asked)
      match: rec.match, toast: false, retained: true,
      onEvent: function (e) { self._event(key, e); },
    };
    if (rec.from !== null) { opts.resumeAfter = rec.from; }
    if (rec.noResume) { opts.resume = false; }
    rec.handle = this.core.subscribe(rec.topic, opts);
  };

  /* A tab joins a subscription other tabs already hold: give it what this
   * Hub received after the tab's position, or a gap where the Hub cannot
   * know (its memory does not reach back that far). */
  Hub.prototype._catchUp = function (tabId, s, rec) {
    var self = this;
    if (s.retained) {
      for (var topic in rec.retainedEvents) {
        this._post(tabId, { t: "event", sids: [s.sid], event: rec.retainedEvents[topic], toast: false });
      }
    }
    if (!isLogPosition(s.resumeAfter)) { return; }
    var base = rec.base;
    if (base === null && rec.handle) {
      var p = rec.handle.position();
      base = rec.base = isLogPosition(p) ? p : null;
    }
    var covered = base !== null && s.resumeAfter >= base &&
      (rec.dropped === null || s.resumeAfter >= rec.dropped);
    if (!covered) {
      this._post(tabId, { t: "gap", sid: s.sid, info: {
        topic: s.topic, requested: s.resumeAfter, first: null,
        position: rec.handle ? rec.handle.position() : null,
      } });
      return;
    }
    rec.ring.forEach(function (ev) {
      if (ev.publication > s.resumeAfter) {
        self._post(tabId, { t: "event", sids: [s.sid], event: ev, toast: false });
      }
    });
  };

  Hub.prototype._event = function (key, e) {
    var rec = this.keys[key];
    if (!rec) { return; }
    var ev = plainEvent(e);
    if (ev.retained) { rec.retainedEvents[ev.topic] = ev; }
    var self = this;
    if (!ev.retained && isLogPosition(ev.publication)) {
      rec.ring.push(ev);
      if (rec.ring.length > RING) { rec.dropped = rec.ring.shift().publication; }
    }
    var byTab = {};
    Object.keys(rec.refs).forEach(function (ref) {
      var i = ref.indexOf("/");
      var tab = ref.slice(0, i);
      var sid = ref.slice(i + 1);
      if (ev.retained && !(self.tabs[tab] && self.tabs[tab].subs[sid] && self.tabs[tab].subs[sid].retained)) {
        return; // a retained event goes only to the subscriptions that asked
      }
      (byTab[tab] = byTab[tab] || []).push(sid);
    });
    var toastTab = this._toastTab(key, byTab, ev);
    for (var tab in byTab) {
      this._post(tab, { t: "event", sids: byTab[tab], event: ev, toast: tab === toastTab });
    }
  };

  Hub.prototype._wantsToast = function (tabId, sids) {
    var tab = this.tabs[tabId];
    return !!tab && sids.some(function (sid) { return tab.subs[sid] && tab.subs[sid].toast; });
  };

  /* The one tab that toasts this event: visible, focused last; or none now
   * (queued for the first tab that becomes visible). */
  Hub.prototype._toastTab = function (key, byTab, ev) {
    var id = ev.publication;
    if (id !== undefined && id !== null) {
      if (this._toasted.ids[id]) { return null; }
    }
    var self = this;
    var best = null;
    var wanted = false;
    Object.keys(byTab).forEach(function (tabId) {
      if (!self._wantsToast(tabId, byTab[tabId])) { return; }
      wanted = true;
      var tab = self.tabs[tabId];
      if (tab.visible && (best === null || tab.focusedAt > self.tabs[best].focusedAt)) { best = tabId; }
    });
    if (!wanted) { return null; }
    if (id !== undefined && id !== null) {
      this._toasted.ids[id] = true;
      this._toasted.order.push(id);
      if (this._toasted.order.length > TOASTED) { delete this._toasted.ids[this._toasted.order.shift()]; }
    }
    if (best === null) {
      this._pending.push({ key: key, event: ev });
      if (this._pending.length > PENDING_TOASTS) { this._pending.shift(); }
    }
    return best;
  };

  Hub.prototype._flushToasts = function (tabId) {
    var tab = this.tabs[tabId];
    var self = this;
    this._pending = this._pending.filter(function (p) {
      var sid = Object.keys(tab.subs).filter(function (s) {
        return tab.subs[s].key === p.key && tab.subs[s].toast;
      })[0];
      if (sid === undefined) { return true; }
      self._post(tabId, { t: "toast", sid: sid, event: p.event });
      return false;
    });
  };

  Hub.prototype._unsub = function (tabId, sid) {
    var tab = this.tabs[tabId];
    var entry = tab && tab.subs[sid];
    if (!entry) { return; }
    delete tab.subs[sid];
    var rec = this.keys[entry.key];
    if (!rec) { return; }
    delete rec.refs[tabId + "/" + sid];
    if (Object.keys(rec.refs).length === 0 && !rec.linger) {
      // the last tab dropped it: unsubscribe on the server, a moment later
      // (a tab that re-subscribes meanwhile keeps it: no UNSUBSCRIBE racing
      // a new SUBSCRIBE of the same topic)
      var self = this;
      rec.linger = setTimeout(function () {
        rec.linger = null;
        if (self.keys[entry.key] !== rec || Object.keys(rec.refs).length) { return; }
        if (rec.handle) { rec.handle.unsubscribe(); }
        delete self.keys[entry.key];
        self._pending = self._pending.filter(function (p) { return p.key !== entry.key; });
      }, LINGER_MS);
    }
  };

  /* A tab is gone (closed, navigated away, or silent). */
  Hub.prototype.drop = function (tabId) {
    var tab = this.tabs[tabId];
    if (!tab) { return; }
    var self = this;
    Object.keys(tab.subs).forEach(function (sid) { self._unsub(tabId, sid); });
    delete this.tabs[tabId];
    this._broadcastCount();
    this._reportState();
  };

  /* Drop the tabs not heard from for `ms` (without Web Locks). */
  Hub.prototype.expire = function (ms) {
    var now = Date.now();
    var self = this;
    Object.keys(this.tabs).forEach(function (id) {
      if (now - self.tabs[id].seen > ms) { self.drop(id); }
    });
  };

  Hub.prototype.closeAll = function (reason) {
    if (this._closed) { return; }
    this._closed = reason;
    if (this.core) { this.core.close(); }
    this._post(null, { t: "closed", reason: reason });
    // the closed tabs stay closed; what they subscribed to is gone
    this.keys = Object.create(null);
    this.tabs = Object.create(null);
    this._pending = [];
  };

  Hub.prototype._reopen = function () {
    this._closed = null;
    this.core = null;
    this.state = null;
    this._info = {};
    this._gathering = true;
  };

  Hub.prototype._askTicket = function () {
    var self = this;
    var ids = Object.keys(this.tabs).filter(function (id) { return self.tabs[id].hasTicket; });
    ids.sort(function (a, b) { return self.tabs[b].focusedAt - self.tabs[a].focusedAt; });
    if (!ids.length) { return Promise.reject(new Error("NotifyD: no tab can give a ticket")); }
    var id = newId();
    var answer = awaitAnswer(this._tickets, id, TICKET_MS, "NotifyD: no ticket from the tabs");
    this._post(ids[0], { t: "ticket?", id: id });
    return answer;
  };

  Hub.prototype._ticketAnswer = function (m) {
    var waiting = this._tickets[m.id];
    if (!waiting) { return; }
    if (m.error !== undefined) {
      if (/logged out/i.test(String(m.error))) { this.closeAll("logged out"); }
      waiting.reject(new Error(m.error));
    } else {
      waiting.resolve(m.value);
    }
  };

  Hub.prototype._publish = function (m) {
    var self = this;
    this.core.publish(m.topic, m.args, m.kwargs, m.options).then(function () {
      self._post(m.tab, { t: "published", id: m.id, ok: true });
    }, function (err) {
      self._post(m.tab, { t: "published", id: m.id, ok: false,
        error: err && err.error ? err.error : String(err && err.message || err) });
    });
  };

  /* A SharedWorker's global scope hosts one Hub for every tab that connects. */
  function serveSharedWorker(scope) {
    var ports = Object.create(null);
    var locks = scope.navigator && scope.navigator.locks;
    var hub = new Hub(function (tab, msg) {
      if (tab) {
        if (ports[tab]) { ports[tab].postMessage(msg); }
        return;
      }
      for (var id in ports) { ports[id].postMessage(msg); }
    }, { autobahn: scope.autobahn, locks: locks });
    if (!locks) { setInterval(function () { hub.expire(SILENT_MS); }, PING_MS); }
    var drop = hub.drop;
    hub.drop = function (id) { drop.call(hub, id); delete ports[id]; };
    scope.onconnect = function (e) {
      var port = e.ports[0];
      port.onmessage = function (ev) {
        var m = ev.data;
        if (!m || typeof m.tab !== "string") { return; }
        if (m.t === "hello") { ports[m.tab] = port; }
        if (!ports[m.tab]) {
          // a tab this worker does not know (dropped as silent): ask it to
          // say hello, on the port it spoke from
          port.postMessage({ t: "hello?" });
          return;
        }
        hub.receive(m);
      };
      port.start();
    };
    return hub;
  }

  /* ---- a tab's side of the shared session ------------------------------ */

  function SharedNotifier(options, mode) {
    this.options = options;
    this.sharing = mode;
    this.tab = newId();
    this._urls = Array.isArray(options.url) ? options.url.slice() : [options.url || defaultUrl()];
    this.url = this._urls[0];
    this.realm = options.realm || "realm1";
    this._listeners = {};
    this._wanted = [];
    this._replies = {};
    this._closing = false;
    this.state = null;
    this.reconnects = 0;
    this.tabs = 1;
    var toasts = options.toasts === undefined ? true : options.toasts;
    this._toaster = toasts ? new Toaster(toasts === true ? {} : toasts) : null;
    this._render = options.render || defaultRender;
    this._focusedAt = document.hasFocus() ? Date.now() : 0;
    this._name = shareName(options);
    var self = this;
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") { self._focusedAt = Date.now(); }
      self._send({ t: "vis", visible: self._visible(), focusedAt: self._focusedAt, state: self._presenceState });
    });
    window.addEventListener("focus", function () {
      self._focusedAt = Date.now();
      self._send({ t: "vis", visible: self._visible(), focusedAt: self._focusedAt, state: self._presenceState });
    });
    window.addEventListener("pagehide", function () { self._send({ t: "bye" }); });
    this._presenceState = null;
    if (options.presence !== false) {
      this._presence = new PresenceWatch(options.presence, function (state) {
        self._presenceState = state;
        self._send({ t: "vis", visible: self._visible(), focusedAt: self._focusedAt, state: state });
      });
    }
    this._setState("connecting");
    this._connect(mode);
  }

  ["on", "off", "_emit", "_setState", "subscriptions", "toast"].forEach(function (name) {
    SharedNotifier.prototype[name] = Notifier.prototype[name];
  });

  SharedNotifier.prototype._visible = function () {
    return document.visibilityState === "visible";
  };

  SharedNotifier.prototype._connect = function (mode) {
    var self = this;
    this.sharing = mode;
    if (mode === "worker") {
      var worker;
      try {
        worker = new SharedWorker(workerUrl(this.options), { name: this._name });
      } catch (e) {
        this._connect(leaderPossible() ? "leader" : "none");
        return;
      }
      var welcomed = false;
      var fellBack = false;
      var fallBack = function () {
        if (welcomed || fellBack) { return; }
        fellBack = true;
        worker.port.onmessage = null;
        self._connect(leaderPossible() ? "leader" : "none");
      };
      worker.onerror = fallBack;
      // a worker that never answers (its script missing, say)
      setTimeout(fallBack, WELCOME_MS);
      worker.port.onmessage = function (ev) {
        if (fellBack) { return; }
        if (ev.data && ev.data.t === "welcome") { welcomed = true; }
        self._receive(ev.data);
      };
      worker.port.start();
      this._port = worker.port;
      this._holdTabLock(function () { self._hello(); });
      if (!navigator.locks) {
        setInterval(function () { self._send({ t: "ping" }); }, PING_MS);
      }
      return;
    }
    if (mode === "leader") {
      var channel = new BroadcastChannel(this._name);
      channel.onmessage = function (ev) {
        var m = ev.data;
        if (m && (m.to === self.tab || m.to === "*")) { self._receive(m); }
      };
      this._port = channel;
      this._holdTabLock(function () {
        self._hello();
        // the tab that gets the lock hosts the session until it goes
        navigator.locks.request(self._name + ":host", function () {
          // a tab of a closed (logged out) session hands the lock on
          if (self._closing) { return null; }
          self._host();
          return new Promise(function () {});
        });
      });
      return;
    }
    // neither: this tab connects on its own, as notifyd.js always did
    this.sharing = "none";
    this._localHub();
  };

  function leaderPossible() {
    return typeof BroadcastChannel !== "undefined" && typeof navigator !== "undefined" &&
      !!navigator.locks;
  }

  function workerUrl(options) {
    if (options.workerUrl) { return options.workerUrl; }
    var ab = document.querySelector("script[src*='autobahn']");
    var base = SCRIPT_URL || location.href;
    var url = new URL("notifyd-worker.js", base);
    url.searchParams.set("notifyd", new URL(base).href);
    if (ab) { url.searchParams.set("autobahn", ab.src); }
    return url.href;
  }

  /* This tab holds a lock named after it while it lives: the host learns
   * it is gone when the lock is released. */
  SharedNotifier.prototype._holdTabLock = function (then) {
    var self = this;
    if (!navigator.locks || this._tabLock === "held") { then(); return; }
    this._tabLockThen = then; // a fallback after the request: the latest wins
    if (this._tabLock) { return; }
    this._tabLock = "asked";
    navigator.locks.request(SHARE_PREFIX + "tab:" + this.tab, function () {
      self._tabLock = "held";
      self._tabLockThen();
      return new Promise(function () {});
    });
  };

  /* This tab was elected: host the Hub, relaying over the BroadcastChannel. */
  SharedNotifier.prototype._host = function () {
    var out = new BroadcastChannel(this._name);
    var hub = new Hub(function (tab, msg) {
      msg.to = tab || "*";
      out.postMessage(msg);
    }, { locks: navigator.locks });
    this._hub = hub;
    out.onmessage = function (ev) {
      var m = ev.data;
      if (m && m.to === "hub") { hub.receive(m); }
    };
    // every tab (this one too) says hello again to the new host
    out.postMessage({ to: "*", t: "host" });
  };

  /* No sharing after all (the SharedWorker failed and there is no Web
   * Locks): a Hub of this tab's own, so that one code path serves all. */
  SharedNotifier.prototype._localHub = function () {
    var self = this;
    var hub = new Hub(function (tab, msg) { self._receive(msg); }, {});
    this._hub = hub;
    this._port = { postMessage: function (m) { hub.receive(m); } };
    this._hello();
  };

  SharedNotifier.prototype._send = function (m) {
    if (!this._port) { return; }
    m.tab = this.tab;
    if (this.sharing === "leader") { m.to = "hub"; }
    this._port.postMessage(m);
  };

  SharedNotifier.prototype._subMessage = function (w) {
    return {
      sid: w.sid, topic: w.topic, match: w.options.match || "exact",
      toast: w.options.toast === undefined ? true : !!w.options.toast,
      retained: !!w.options.retained,
      resumeAfter: w.noResume ? null : (w.last !== null ? w.last : w.resumeAfter),
      noResume: w.noResume,
    };
  };

  SharedNotifier.prototype._hello = function () {
    var self = this;
    if (this._closing) { return; } // a closed tab does not bring a session back
    this._send({
      t: "hello",
      options: shareableOptions(this.options),
      visible: this._visible(),
      focusedAt: this._focusedAt,
      state: this._presenceState,
      subs: this._wanted.map(function (w) { return self._subMessage(w); }),
    });
  };

  SharedNotifier.prototype._find = function (sid) {
    for (var i = 0; i < this._wanted.length; i++) {
      if (this._wanted[i].sid === sid) { return this._wanted[i]; }
    }
    return null;
  };

  SharedNotifier.prototype._receive = function (m) {
    if (!m || typeof m !== "object") { return; }
    switch (m.t) {
      case "host": this._hello(); break;
      case "hello?": this._hello(); break;
      case "welcome":
        if (m.state) { this._applyState(m.state, m.info || {}); }
        this._tabs(m.tabs);
        break;
      case "state": this._applyState(m.state, m.info || {}); break;
      case "tabs": this._tabs(m.count); break;
      case "event": this._event(m); break;
      case "toast": {
        var w = this._find(m.sid);
        if (w) { this._show(w, this._eventFor(w, m.event)); }
        break;
      }
      case "subscribed": {
        var sw = this._find(m.sid);
        if (sw) {
          // where the host's subscription started: a later host resumes
          // from here even if no event came yet
          if (sw.last === null && sw.resumeAfter === null && !sw.noResume &&
              isLogPosition(m.info.position)) {
            sw.resumeAfter = m.info.position;
          }
          var info = Object.assign({}, m.info);
          delete info.position;
          this._emit("subscribed", info);
        }
        break;
      }
      case "gap": {
        var g = this._find(m.sid);
        if (g) {
          g.last = null;
          g.resumeAfter = typeof m.info.position === "number" ? m.info.position : null;
          this._emit("gap", {
            topic: m.info.topic, subscription: g.handle, requested: m.info.requested,
            first: m.info.first, position: m.info.position,
          });
        }
        break;
      }
      case "error": if (this._find(m.sid)) { this._emit("error", m.info); } break;
      case "disconnect": this._emit("disconnect", m.info); break;
      case "ticket?": this._giveTicket(m.id); break;
      case "published": {
        var r = this._replies[m.id];
        if (r) {
          if (m.ok) { r.resolve(true); } else { r.reject({ error: m.error }); }
        }
        break;
      }
      case "closed":
        this._closing = true;
        this._setState("closed", { reason: m.reason });
        break;
      default:
        break;
    }
  };

  SharedNotifier.prototype._applyState = function (state, info) {
    if (this._closing && state !== "closed") { return; }
    if (state === "live") { this._wasLive = true; }
    if (state === "connecting" && this._wasLive) {
      state = "reconnecting"; // a new host (a hand-over), seen from this tab
    }
    if (typeof info.reconnects === "number") { this.reconnects = info.reconnects; }
    this._setState(state, info);
  };

  SharedNotifier.prototype._tabs = function (count) {
    if (typeof count !== "number" || count === this.tabs) { return; }
    this.tabs = count;
    this._emit("tabs", count);
  };

  SharedNotifier.prototype._eventFor = function (w, e) {
    return {
      topic: e.topic, args: e.args || [], kwargs: e.kwargs || {}, publication: e.publication,
      publisher: e.publisher, retained: !!e.retained, subscription: w.handle,
      receivedAt: new Date(e.receivedAt),
      messageId: typeof e.messageId === "string" ? e.messageId : null, receipt: !!e.receipt,
    };
  };

  SharedNotifier.prototype._event = function (m) {
    var toasted = false;
    for (var i = 0; i < m.sids.length; i++) {
      var w = this._find(m.sids[i]);
      if (!w) { continue; }
      var pub = m.event.publication;
      if (!m.event.retained && isLogPosition(pub)) {
        // after a hand-over the new host resumes from the oldest position
        // any tab saw: drop what this tab already had
        var floor = w.last !== null ? w.last : (w.noResume ? null : w.resumeAfter);
        if (floor !== null && pub <= floor) { continue; }
        w.last = pub;
      }
      var event = this._eventFor(w, m.event);
      if (w.options.onEvent) {
        try { w.options.onEvent(event); } catch (e) {
          if (typeof console !== "undefined") { console.error("NotifyD onEvent failed:", e); }
        }
      }
      this._emit("event", event);
      if (m.toast && !toasted && (w.options.toast === undefined || w.options.toast)) {
        toasted = this._show(w, event);
      }
    }
  };

  SharedNotifier.prototype._show = function (w, event) {
    if (!this._toaster) { return false; }
    var render = w.options.render || this._render;
    var content = render(event);
    if (!content) { return false; }
    content.topic = event.topic;
    var self = this;
    this._toaster.show(content, event.receipt ? function () { self.displayed(event); } : null);
    return true;
  };

  /* As Notifier.displayed: the session's host tab reports it. */
  SharedNotifier.prototype.displayed = function (event) {
    var mid = receiptId(event);
    if (typeof mid === "string" && mid) { this._send({ t: "displayed", mid: mid }); }
  };

  SharedNotifier.prototype._giveTicket = function (id) {
    var self = this;
    var ticket = this.options.ticket;
    Promise.resolve().then(function () {
      return typeof ticket === "function" ? ticket() : ticket;
    }).then(function (value) {
      self._send({ t: "ticket", id: id, value: value });
    }, function (err) {
      self._send({ t: "ticket", id: id, error: String(err && err.message || err) });
    });
  };

  SharedNotifier.prototype.subscribe = function (topic, options) {
    var self = this;
    if (typeof options === "function") { options = { onEvent: options }; }
    options = options || {};
    var resumeAfter = options.resumeAfter !== undefined ? options.resumeAfter : this.options.resumeAfter;
    var w = {
      sid: newId(), topic: topic, options: options, last: null,
      resumeAfter: typeof resumeAfter === "number" ? resumeAfter : null,
      noResume: options.resume === false, handle: null,
    };
    w.handle = {
      topic: topic,
      match: options.match || "exact",
      unsubscribe: function () {
        var i = self._wanted.indexOf(w);
        if (i >= 0) {
          self._wanted.splice(i, 1);
          self._send({ t: "unsub", sid: w.sid });
        }
        return Promise.resolve(true);
      },
      position: function () { return w.last !== null ? w.last : w.resumeAfter; },
    };
    this._wanted.push(w);
    this._send({ t: "sub", sub: this._subMessage(w) });
    return w.handle;
  };

  SharedNotifier.prototype.publish = function (topic, args, kwargs, options) {
    if (this.state !== "live") { return Promise.reject(new Error("not connected")); }
    var id = newId();
    // a host that goes away meanwhile never answers
    var answer = awaitAnswer(this._replies, id, TICKET_MS, "NotifyD: no answer to publish");
    this._send({ t: "publish", id: id, topic: topic, args: args || [], kwargs: kwargs || {},
      options: options || { acknowledge: true } });
    return answer;
  };

  /** Close for good, for every tab sharing the session (a logout). */
  SharedNotifier.prototype.close = function () {
    this._closing = true;
    this._send({ t: "close", reason: "closed by a tab" });
    this._setState("closed", { reason: "closed by this tab" });
  };
  SharedNotifier.prototype.disconnect = SharedNotifier.prototype.close;

  function shareMode(options) {
    if (options.share === false || options.autobahn || typeof window === "undefined" ||
        typeof document === "undefined") {
      return "none";
    }
    if (options.share !== "leader" && typeof SharedWorker !== "undefined" &&
        (options.workerUrl || SCRIPT_URL)) {
      return "worker";
    }
    return leaderPossible() ? "leader" : "none";
  }

  return {
    connect: function (options) {
      options = options || {};
      var mode = shareMode(options);
      return mode === "none" ? new Notifier(options) : new SharedNotifier(options, mode);
    },
    Notifier: Notifier,
    Hub: Hub,
    Toaster: Toaster,
    defaultRender: defaultRender,
    _serveSharedWorker: serveSharedWorker,
    version: "0.2.0",
  };
});
