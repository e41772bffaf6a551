"""
The publishing side of a backend: one function per domain event, built on
notifyd's Python API (:mod:`notifyd.publisher`), so no header name is
written by hand.

Copy this file into your application and adapt the functions. What every
event gets from :class:`notifyd.publisher.Publisher`:

* publisher confirms (``publish`` returns once RabbitMQ has it), persistent
  messages, ``mandatory`` with retries for topics the event log keeps;
* a JSON body, ``content_type: application/json``, a ``timestamp``;
* a ``message_id``: here a stable id of the domain event, so that a retry
  (or the browser, or the receipts) can tell one event from another;
* targeting headers in the form notifyd accepts (comma-separated strings).

Topics follow the authz rules of ``docs/examples/authz.toml``: a customer
sees ``acct.<account>.`` and ``user.<login>.`` and ``announcements``.
"""

from __future__ import annotations

from typing import Any

from notifyd.publisher import Publisher


class Notifications:
    """The events this backend tells browsers about."""

    def __init__(
        self,
        amqp_url: str,
        exchange: str = "events",
        *,
        logged: list[str] | None = None,
        receipts: bool = False,
    ) -> None:
        """``logged``: notifyd's ``history`` binding keys (the publisher
        retries those until the event log took them); ``receipts``: ask for
        delivery receipts and a 5-minute email fallback on user events
        (notifyd ``receipts = true``, docs/presence.md)."""
        self.publisher = Publisher(amqp_url, exchange, logged=logged or ())
        self.receipts = receipts

    def close(self) -> None:
        self.publisher.close()

    def __enter__(self) -> Notifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for everybody in one account ----------------------------------------------
    def client_created(self, account: str, client: str, by: str) -> bool:
        """Every user of ``account`` sees it."""
        return self.publisher.publish(
            f"acct.{account}.client.created",
            {"title": "New client", "body": f"{by} added {client}", "client": client},
            message_id=f"client-created-{account}-{client}",
            eligible_extra={"account": [account]},
        )

    # -- for one user ----------------------------------------------------------------------
    def invoice_sent(self, account: str, invoice: str, owner: str) -> bool:
        """Only ``owner`` (a login) is told; with receipts, an email goes out
        if no browser of theirs displayed it within 5 minutes."""
        extra: dict[str, Any] = {}
        if self.receipts:
            extra["fallback_after"] = 300
        return self.publisher.publish(
            f"acct.{account}.invoice.sent",
            {"title": "Invoice sent", "body": f"Invoice {invoice} was sent", "invoice": invoice},
            message_id=f"invoice-sent-{invoice}",
            eligible_extra={"account": [account]},
            eligible_authid=[owner],
            **extra,
        )

    # -- for one role -------------------------------------------------------------------------
    def invoice_overdue(self, account: str, invoice: str) -> bool:
        """Only the account's admins."""
        return self.publisher.publish(
            f"acct.{account}.invoice.overdue",
            {
                "title": "Invoice overdue",
                "body": f"Invoice {invoice} is overdue",
                "level": "warning",
            },
            message_id=f"invoice-overdue-{invoice}",
            eligible_extra={"account": [account]},
            eligible_authrole=["admin"],
        )

    # -- for everybody, kept for those who come later ---------------------------------------
    def announce(self, text: str, announcement_id: str) -> bool:
        """A retained event (notifyd ``history`` on): a page that subscribes
        later with ``retained: true`` gets the latest one."""
        return self.publisher.publish(
            "announcements",
            {"title": "Announcement", "body": text},
            message_id=f"announcement-{announcement_id}",
            retain=True,
        )


def main() -> None:
    """Publish one of each: ``python notifications.py AMQP_URL [EXCHANGE]``."""
    import sys

    url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
    exchange = sys.argv[2] if len(sys.argv) > 2 else "events"
    with Notifications(url, exchange) as n:
        n.client_created("42", "Acme Ltd", by="alice")
        n.invoice_sent("42", "INV-1042", owner="alice")
        n.invoice_overdue("42", "INV-1001")
        print("published 3 events to", exchange)


if __name__ == "__main__":
    main()
