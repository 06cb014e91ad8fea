"""``voucherify-ingest enqueue``: put events on the queue from the command line."""

from __future__ import annotations

import json
import sys

import click

from ..errors import InvalidEvent, format_messages
from .common import EXIT_FAILURE, load_settings, setup


def _read_payload(payload_json: str | None) -> object:
    text = payload_json if payload_json is not None else sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"payload is not valid JSON: {exc}") from None


@click.command("enqueue")
@click.argument("payload_json", required=False)
@click.option("--event-id", default=None, help="Use this event id instead of a new uuid4.")
def enqueue_command(payload_json, event_id):
    """Validate one event and enqueue it; print its event id.

    The event is PAYLOAD_JSON, or standard input when it is omitted.

    \b
    Examples:
      voucherify-ingest enqueue '{"event":"signed_up","customer":{"source_id":"u1"}}'
      echo '{"event":"order_paid","customer":{"id":"cust_1"}}' | voucherify-ingest enqueue
    """
    from producers import Producer

    settings = load_settings()
    setup(settings)
    payload = _read_payload(payload_json)
    producer = Producer(settings)
    try:
        click.echo(producer.enqueue_event(payload, event_id=event_id))
    except InvalidEvent as exc:
        click.echo(f"invalid event: {format_messages(exc.messages)}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        producer.close()


def register(group: click.Group) -> None:
    group.add_command(enqueue_command)
