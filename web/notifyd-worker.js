/*
 * notifyd-worker.js — the SharedWorker that hosts the one notifyd session
 * of all tabs of this origin (see notifyd.js, "one session for all tabs").
 * notifyd.js starts it with the URLs of itself and of Autobahn|JS:
 *   notifyd-worker.js?notifyd=<url of notifyd.js>&autobahn=<url of autobahn.min.js>
 */
/* global importScripts, NotifyD */
(function () {
  "use strict";
  var params = new URLSearchParams(self.location.search);
  var here = self.location.href;
  // only scripts of this origin: the worker runs with the page's authority
  function sameOrigin(url, fallback) {
    try {
      var u = new URL(url || fallback, here);
      return u.origin === self.location.origin ? u.href : new URL(fallback, here).href;
    } catch (e) {
      return new URL(fallback, here).href;
    }
  }
  importScripts(
    sameOrigin(params.get("autobahn"), "vendor/autobahn.min.js"),
    sameOrigin(params.get("notifyd"), "notifyd.js")
  );
  NotifyD._serveSharedWorker(self);
})();
