"use strict";
/*
 * The publishing side of a Node backend for notifyd (amqplib): one function
 * per domain event. Copy it into your application and adapt the functions.
 *
 * Every event is published the way notifyd expects (README.md, "Publishing
 * from the backend"): a JSON body, persistent, a message_id that names the
 * domain event, a timestamp, publisher confirms and `mandatory`; targeting
 * with the documented string headers (comma-separated, never AMQP arrays).
 * Topics follow docs/examples/authz.toml: `acct.<account>.`, `user.<login>.`,
 * `announcements`.
 */
const amqp = require("amqplib");

/* The targeting headers notifyd reads (docs/protocol.md). Lists become
 * comma-separated strings; a value with a comma cannot be carried. */
function eventHeaders(t) {
  const headers = {};
  const list = (name, values) => {
    if (values === undefined) { return; }
    if (!Array.isArray(values)) { throw new TypeError(name + ": give an array"); }
    for (const v of values) {
      if (typeof v !== "string" || !v || v.includes(",")) {
        throw new TypeError(name + ": values must be non-empty strings without commas");
      }
    }
    headers[name] = values.join(",");
  };
  list("wamp-eligible-authid", t.eligibleAuthid);
  list("wamp-exclude-authid", t.excludeAuthid);
  list("wamp-eligible-authrole", t.eligibleAuthrole);
  list("wamp-exclude-authrole", t.excludeAuthrole);
  for (const [name, values] of Object.entries(t.eligibleExtra || {})) {
    list("wamp-eligible-extra-" + name.toLowerCase(), values);
  }
  for (const [name, values] of Object.entries(t.excludeExtra || {})) {
    list("wamp-exclude-extra-" + name.toLowerCase(), values);
  }
  if (t.retain) { headers["wamp-retain"] = true; }
  if (t.receipt) { headers["notifyd-receipt"] = true; }
  if (t.fallbackAfter !== undefined) { headers["notifyd-fallback-after"] = t.fallbackAfter; }
  return headers;
}

class Notifications {
  /* `await Notifications.connect(url, exchange)`. */
  static async connect(url, exchange = "events") {
    const conn = await amqp.connect(url);
    const channel = await conn.createConfirmChannel();
    await channel.assertExchange(exchange, "topic", { durable: true });
    return new Notifications(conn, channel, exchange);
  }

  constructor(conn, channel, exchange) {
    this.conn = conn;
    this.channel = channel;
    this.exchange = exchange;
    this.returned = new Set(); // message ids RabbitMQ returned (no queue took them)
    channel.on("return", (msg) => this.returned.add(msg.properties.messageId));
  }

  /* Publish one event; resolves true once RabbitMQ confirmed it, false if
   * no queue took it (no node has a subscriber for this topic now). */
  publish(topic, value, { messageId, ...targeting } = {}) {
    const headers = eventHeaders(targeting);
    const body = Buffer.from(JSON.stringify(value));
    return new Promise((resolve, reject) => {
      this.channel.publish(this.exchange, topic, body, {
        contentType: "application/json",
        persistent: true,
        mandatory: true,
        messageId,
        timestamp: Math.floor(Date.now() / 1000),
        headers,
      }, (err) => {
        if (err) { reject(err); return; } // a negative confirm
        // RabbitMQ sends basic.return before the confirm of the same message
        resolve(!this.returned.delete(messageId));
      });
    });
  }

  /* Every user of the account. */
  clientCreated(account, client, by) {
    return this.publish(`acct.${account}.client.created`,
      { title: "New client", body: `${by} added ${client}`, client },
      { messageId: `client-created-${account}-${client}`, eligibleExtra: { account: [account] } });
  }

  /* One user (a login) of the account. */
  invoiceSent(account, invoice, owner) {
    return this.publish(`acct.${account}.invoice.sent`,
      { title: "Invoice sent", body: `Invoice ${invoice} was sent`, invoice },
      { messageId: `invoice-sent-${invoice}`, eligibleExtra: { account: [account] },
        eligibleAuthid: [owner] });
  }

  /* The account's admins. */
  invoiceOverdue(account, invoice) {
    return this.publish(`acct.${account}.invoice.overdue`,
      { title: "Invoice overdue", body: `Invoice ${invoice} is overdue`, level: "warning" },
      { messageId: `invoice-overdue-${invoice}`, eligibleExtra: { account: [account] },
        eligibleAuthrole: ["admin"] });
  }

  /* Everybody; retained (notifyd history on) for pages that come later. */
  announce(text, id) {
    return this.publish("announcements", { title: "Announcement", body: text },
      { messageId: `announcement-${id}`, retain: true });
  }

  async close() {
    await this.channel.close();
    await this.conn.close();
  }
}

module.exports = { Notifications, eventHeaders };

/* node notifications.js AMQP_URL [EXCHANGE]: publish one of each. */
if (require.main === module) {
  (async () => {
    const n = await Notifications.connect(process.argv[2] || "amqp://guest:guest@127.0.0.1:5672/%2F",
      process.argv[3] || "events");
    await n.clientCreated("42", "Acme Ltd", "alice");
    await n.invoiceSent("42", "INV-1042", "alice");
    await n.invoiceOverdue("42", "INV-1001");
    await n.close();
    console.log("published 3 events");
  })().catch((e) => { console.error(e); process.exit(1); });
}
