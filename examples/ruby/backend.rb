# A Ruby backend's side of notifyd (Debian: ruby-bunny, ruby-jwt): the
# publisher (bunny) and the ticket (jwt gem). See docs/integration.md.
#
#   ruby examples/ruby/backend.rb publish AMQP_URL [EXCHANGE]   # one of each event
#   ruby examples/ruby/backend.rb ticket SECRET_FILE LOGIN      # a ticket for LOGIN
#
# Every event: JSON, persistent, a message_id naming the domain event, a
# timestamp, publisher confirms and `mandatory`; targeting with the
# documented string headers (comma-separated, never AMQP arrays). Topics
# follow docs/examples/authz.toml.
require "bunny"
require "json"
require "jwt"

module NotifydExample
  USERS = { "alice" => ["42", "admin"], "bob" => ["42", "user"], "carol" => ["7", "user"] }.freeze
  TICKET_LIFETIME = 600 # seconds: keep tickets short-lived

  # The JWT notifyd accepts for +login+ (HS256; docs/security.md).
  def self.ticket(login, secret, audience: "notifyd", issuer: "http://127.0.0.1:8000")
    account, role = USERS.fetch(login)
    now = Time.now.to_i
    JWT.encode({ sub: login, role: role, account: account, aud: audience, iss: issuer,
                 iat: now, exp: now + TICKET_LIFETIME }, secret, "HS256")
  end

  # The targeting headers notifyd reads (docs/protocol.md).
  def self.headers(eligible_authid: nil, eligible_authrole: nil, exclude_authid: nil,
                   eligible_extra: {}, retain: false)
    h = {}
    list = lambda do |name, values|
      return if values.nil?
      values.each do |v|
        raise ArgumentError, "#{name}: non-empty strings without commas" if !v.is_a?(String) || v.empty? || v.include?(",")
      end
      h[name] = values.join(",")
    end
    list.call("wamp-eligible-authid", eligible_authid)
    list.call("wamp-exclude-authid", exclude_authid)
    list.call("wamp-eligible-authrole", eligible_authrole)
    eligible_extra.each { |name, values| list.call("wamp-eligible-extra-#{name.to_s.downcase}", values) }
    h["wamp-retain"] = true if retain
    h
  end

  class Notifications
    def initialize(url, exchange = "events")
      @conn = Bunny.new(url, logger: Logger.new(nil)).tap(&:start)
      @channel = @conn.create_channel
      @channel.confirm_select
      @exchange = @channel.topic(exchange, durable: true)
      @returned = []
      @exchange.on_return { |_info, props, _body| @returned << props.message_id }
    end

    # Publish one event; true once RabbitMQ confirmed it, false if no queue
    # took it (no node has a subscriber for this topic now).
    def publish(topic, value, message_id:, **targeting)
      @exchange.publish(JSON.generate(value), routing_key: topic, persistent: true,
                        mandatory: true, content_type: "application/json",
                        message_id: message_id, timestamp: Time.now.to_i,
                        headers: NotifydExample.headers(**targeting))
      raise "RabbitMQ refused #{message_id}" unless @channel.wait_for_confirms
      !@returned.delete(message_id)
    end

    def client_created(account, client, by)
      publish("acct.#{account}.client.created",
              { title: "New client", body: "#{by} added #{client}", client: client },
              message_id: "client-created-#{account}-#{client}", eligible_extra: { account: [account] })
    end

    def invoice_sent(account, invoice, owner)
      publish("acct.#{account}.invoice.sent",
              { title: "Invoice sent", body: "Invoice #{invoice} was sent", invoice: invoice },
              message_id: "invoice-sent-#{invoice}", eligible_extra: { account: [account] },
              eligible_authid: [owner])
    end

    def invoice_overdue(account, invoice)
      publish("acct.#{account}.invoice.overdue",
              { title: "Invoice overdue", body: "Invoice #{invoice} is overdue", level: "warning" },
              message_id: "invoice-overdue-#{invoice}", eligible_extra: { account: [account] },
              eligible_authrole: ["admin"])
    end

    def close
      @conn.close
    end
  end
end

if $PROGRAM_NAME == __FILE__
  case ARGV[0]
  when "publish"
    n = NotifydExample::Notifications.new(ARGV[1] || "amqp://guest:guest@127.0.0.1:5672", ARGV[2] || "events")
    n.client_created("42", "Initech", "bob")
    n.invoice_sent("42", "INV-2001", "bob")
    n.invoice_overdue("42", "INV-2002")
    n.close
    puts "published 3 events"
  when "ticket"
    puts NotifydExample.ticket(ARGV[2], File.read(ARGV[1]).strip)
  else
    warn "usage: backend.rb publish AMQP_URL [EXCHANGE] | backend.rb ticket SECRET_FILE LOGIN"
    exit 2
  end
end
