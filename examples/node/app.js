"use strict";
/*
 * A minimal Node backend wired to notifyd: the ticket endpoint (jsonwebtoken)
 * and a page that connects with notifyd.js, plus actions that publish events
 * (notifications.js). See docs/integration.md.
 *
 *   node examples/node/app.js --amqp-url amqp://guest:guest@127.0.0.1:5672/%2F \
 *     --notifyd http://127.0.0.1:8080 --jwt-secret-file notifyd-jwt.secret
 *
 * The "login" (/login?user=alice) stands in for your application's own.
 */
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const path = require("path");
const jwt = require("jsonwebtoken");
const { Notifications } = require("./notifications");

const USERS = { alice: ["42", "admin"], bob: ["42", "user"], carol: ["7", "user"] };
const TICKET_LIFETIME = 600; // seconds: keep tickets short-lived
const PAGE = fs.readFileSync(path.join(__dirname, "..", "page.html"), "utf8");

/* The JWT notifyd accepts for `login` (HS256; docs/security.md). */
function notifydTicket(login, secret, { audience, issuer }) {
  const [account, role] = USERS[login];
  return jwt.sign({ sub: login, role, account }, secret,
    { algorithm: "HS256", expiresIn: TICKET_LIFETIME, audience, issuer });
}

/* notifyd's newest event-log position, or null (no history, unreachable). */
async function notifydPosition(admin) {
  if (!admin) { return null; }
  try {
    const r = await fetch(admin + "/position", { signal: AbortSignal.timeout(2000) });
    return r.ok ? (await r.json()).position : null;
  } catch (e) {
    return null;
  }
}

const js = (v) => JSON.stringify(v).replace(/</g, "\\u003c");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const render = (values) => PAGE.replace(/\{\{(\w+)\}\}/g, (_, name) => values[name]);

function options(argv) {
  const o = {
    "amqp-url": "amqp://guest:guest@127.0.0.1:5672/%2F", exchange: "events",
    notifyd: "http://127.0.0.1:8080", "notifyd-admin": null, "jwt-secret-file": null,
    audience: "notifyd", issuer: "http://127.0.0.1:8000", port: "8000",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in o)) { throw new Error("unknown option " + argv[i]); }
    o[name] = argv[i + 1];
  }
  if (!o["jwt-secret-file"]) { throw new Error("--jwt-secret-file is required (notifyd's)"); }
  return o;
}

async function main() {
  const o = options(process.argv.slice(2));
  const secret = fs.readFileSync(o["jwt-secret-file"]).toString().trim();
  const notifications = await Notifications.connect(o["amqp-url"], o.exchange);
  const sessions = new Map(); // session cookie -> login (your app has its own)

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    const reply = (status, body, type = "text/plain", extra = {}) => {
      res.writeHead(status, { "Content-Type": type + "; charset=utf-8", ...extra });
      res.end(body);
    };
    const sid = (/(?:^|;\s*)session=([^;]+)/.exec(req.headers.cookie || "") || [])[1];
    const login = sid && sessions.get(sid);
    if (url.pathname === "/favicon.ico") { return reply(204, ""); }
    if (url.pathname === "/login") {
      const user = url.searchParams.get("user");
      if (!USERS[user]) { return reply(404, "no such user\n"); }
      const id = crypto.randomBytes(24).toString("base64url");
      sessions.set(id, user);
      return reply(303, "", "text/plain",
        { Location: "/", "Set-Cookie": `session=${id}; Path=/; HttpOnly; SameSite=Lax` });
    }
    if (!login) {
      if (url.pathname === "/") {
        return reply(200, Object.keys(USERS).map((u) => `<li><a href="/login?user=${u}">${u}</a></li>`).join(""),
          "text/html");
      }
      return reply(401, "log in first\n");
    }
    const [account, role] = USERS[login];
    if (req.method === "GET" && url.pathname === "/api/notifyd-ticket") {
      return reply(200, notifydTicket(login, secret, o), "text/plain", { "Cache-Control": "no-store" });
    }
    if (req.method === "GET" && url.pathname === "/") {
      const position = await notifydPosition(o["notifyd-admin"]); // before the state
      return reply(200, render({
        login: esc(login), role: esc(role), account: esc(account), position: js(position),
        notifyd: esc(o.notifyd), login_js: js(login), account_js: js(account),
        ws_js: js(o.notifyd.replace(/^http/, "ws") + "/ws"),
      }), "text/html", { "Cache-Control": "no-store" });
    }
    if (req.method === "POST" && req.headers["x-csrf"] === "1") {
      let body = "";
      for await (const chunk of req) { body += chunk; if (body.length > 4096) { break; } }
      const form = new URLSearchParams(body);
      const value = (form.get("invoice") || form.get("client") || "").slice(0, 100);
      try {
        if (url.pathname === "/api/invoices/send") {
          await notifications.invoiceSent(account, value, login);
        } else if (url.pathname === "/api/clients") {
          await notifications.clientCreated(account, value, login);
        } else if (url.pathname === "/api/invoices/overdue") {
          await notifications.invoiceOverdue(account, value);
        } else {
          return reply(404, "not found\n");
        }
      } catch (e) {
        return reply(503, "could not publish: " + e.message + "\n");
      }
      return reply(204, "");
    }
    return reply(404, "not found\n");
  });
  server.listen(Number(o.port), "127.0.0.1", () => {
    console.log(`example app on http://127.0.0.1:${server.address().port}/`);
  });
}

module.exports = { notifydTicket };

if (require.main === module) {
  main().catch((e) => { console.error(e.message || e); process.exit(1); });
}
