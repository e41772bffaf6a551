/* The demo page: an invoicing app's notification center on notifyd.js. */
(function () {
  "use strict";

  var params = new URLSearchParams(location.search);
  var serializer = params.get("serializer") || "json";
  var realm = params.get("realm") || "realm1";

  function money(amount, currency) {
    if (typeof amount !== "number") { return ""; }
    try {
      return new Intl.NumberFormat("en-GB", { style: "currency", currency: currency || "EUR" }).format(amount);
    } catch (e) {
      return amount.toFixed(2) + " " + (currency || "");
    }
  }

  /* A human sentence for each kind of event the backend publishes. */
  function summarize(topic, value) {
    var v = value && typeof value === "object" ? value : {};
    var amount = money(v.amount, v.currency);
    var tail = amount ? " — " + amount : "";
    var kind = topic.split(".").slice(-2).join(".");
    switch (kind) {
      case "invoice.sent":
        return { title: "Invoice sent", body: "Invoice " + v.invoice + " sent to " + v.client + tail };
      case "invoice.paid":
        return { title: "Invoice paid", body: "Invoice " + v.invoice + " paid by " + v.client + tail };
      case "invoice.overdue":
        return { title: "Invoice overdue", body: "Invoice " + v.invoice + " from " + v.client + " is overdue" + tail, level: "warning" };
      case "client.created":
        return { title: "New client", body: "New client " + v.client + (v.client_id ? " (" + v.client_id + ")" : "") };
      default:
        return NotifyD.defaultRender({ topic: topic, args: [value] });
    }
  }

  function render(event) {
    return summarize(event.topic, event.args[0]);
  }

  var $ = function (id) { return document.getElementById(id); };
  var handles = []; // what the user subscribed to (NotifyD handles)
  $("serializer").value = serializer;
  $("serializer").addEventListener("change", function () {
    params.set("serializer", this.value);
    location.search = params.toString();
  });

  var notifier = NotifyD.connect({
    serializer: serializer,
    realm: realm,
    render: render,
    // ?share=0: this tab connects on its own; ?share=leader: no SharedWorker
    share: params.get("share") === "0" ? false : (params.get("share") || undefined),
  });
  window.notifier = notifier; // for the curious (and the tests)
  $("fact-url").textContent = notifier.url + " (" + serializer + ")";

  var active = {}; // "topic|match" -> subscription id, while live
  notifier.on("subscribed", function (info) {
    active[info.topic + "|" + info.match] = info.id;
    drawSubs();
  });

  var labels = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", closed: "Disconnected" };
  notifier.on("state", function (state, info) {
    $("status").setAttribute("data-state", state);
    $("status-text").textContent = labels[state] || state;
    $("fact-session").textContent = state === "live" && info.session ? String(info.session) : "–";
    if (state !== "live") { active = {}; drawSubs(); }
  });

  var modes = { worker: "shared worker", leader: "leader tab", none: "this tab only" };
  function drawTabs(n) {
    var mode = notifier.sharing || "none";
    $("fact-tabs").textContent = (n || 1) + (n === 1 || !n ? " tab" : " tabs") + " (" + modes[mode] + ")";
    $("fact-tabs").setAttribute("data-tabs", String(n || 1));
  }
  notifier.on("tabs", drawTabs);
  drawTabs(notifier.tabs || 1);

  var count = 0;
  notifier.on("event", function (event) {
    count += 1;
    $("fact-count").textContent = String(count);
    $("empty").hidden = true;
    var s = summarize(event.topic, event.args[0]);
    var row = document.createElement("tr");
    row.setAttribute("data-topic", event.topic);
    var t = document.createElement("td");
    t.textContent = event.receivedAt.toLocaleTimeString("en-GB");
    var topic = document.createElement("td");
    var code = document.createElement("code");
    code.textContent = event.topic;
    topic.appendChild(code);
    var what = document.createElement("td");
    what.className = "summary";
    what.textContent = s.body;
    row.appendChild(t);
    row.appendChild(topic);
    row.appendChild(what);
    var log = $("log");
    log.insertBefore(row, log.firstChild);
    while (log.children.length > 200) { log.removeChild(log.lastChild); }
  });

  notifier.on("gap", function (gap) {
    // the event log no longer reached back to where this page left off
    notifier.toast({
      title: "Some events were missed",
      body: gap.topic + ": events after #" + gap.requested + " are no longer kept; reload for the full picture",
      level: "warning",
    });
  });

  notifier.on("error", function (err) {
    notifier.toast({ title: "Subscription refused", body: err.topic + ": " + err.error, level: "error" });
    removeSub(err.topic);
  });

  function addSub(topic, match) {
    if (handles.some(function (h) { return h.topic === topic && h.match === match; })) { return; }
    var h = notifier.subscribe(topic, { match: match, toast: true });
    handles.push(h);
    drawSubs();
  }
  function removeSub(topic) {
    handles = handles.filter(function (h) {
      if (h.topic === topic) { h.unsubscribe(); return false; }
      return true;
    });
    drawSubs();
  }
  function drawSubs() {
    var ul = $("subs");
    ul.textContent = "";
    handles.forEach(function (h) {
      var li = document.createElement("li");
      var on = active[h.topic + "|" + h.match] !== undefined;
      li.setAttribute("data-active", on ? "true" : "false");
      li.title = on ? "subscribed" : "waiting for the server";
      var code = document.createElement("code");
      code.textContent = h.topic;
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = h.match;
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "secondary small";
      btn.textContent = "Remove";
      btn.setAttribute("aria-label", "Unsubscribe from " + h.topic);
      btn.addEventListener("click", function () {
        delete active[h.topic + "|" + h.match];
        h.unsubscribe();
        handles.splice(handles.indexOf(h), 1);
        drawSubs();
      });
      li.appendChild(code);
      li.appendChild(tag);
      li.appendChild(btn);
      ul.appendChild(li);
    });
  }

  $("sub-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var topic = $("topic").value.trim();
    if (topic) { addSub(topic, $("match").value); }
  });
  $("clear").addEventListener("click", function () {
    $("log").textContent = "";
    $("empty").hidden = false;
  });
  $("toasts").addEventListener("change", function () {
    var on = this.checked;
    document.querySelectorAll(".notifyd-toasts").forEach(function (el) { el.hidden = !on; });
  });

  // the page's defaults: every invoice event, and new clients
  var initial = params.getAll("sub");
  if (initial.length) {
    initial.forEach(function (s) {
      var parts = s.split(":");
      addSub(parts[0], parts[1] || "exact");
    });
  } else {
    addSub("invoice.", "prefix");
    addSub("client.created", "exact");
  }
})();
