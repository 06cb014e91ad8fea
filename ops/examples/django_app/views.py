"""``POST /orders/``: save the order, and enqueue ``order_paid`` only once the save commits."""

from __future__ import annotations

import json
import logging
from decimal import Decimal, InvalidOperation
from functools import partial

from django.db import transaction
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from producers import IngestError, get_producer

from .models import Order

log = logging.getLogger("django_app")


class PaymentDeclined(Exception):
    pass


def report_order_paid(order: Order) -> None:
    """Runs after COMMIT. The event id is derived from the order, so a re-send is harmless."""
    try:
        event_id = get_producer().enqueue_event(
            {
                "event": "order_paid",
                "customer": {"source_id": order.customer_id},
                "metadata": {"order_id": order.pk, "total": float(order.total)},
            },
            event_id=f"order-{order.pk}-paid",
        )
    except IngestError as exc:  # the order stays committed; its event_id stays NULL
        log.error("order_paid for order %s not enqueued: %s", order.pk, exc)
        return
    Order.objects.filter(pk=order.pk).update(event_id=event_id)


@csrf_exempt
@require_POST
def create_order(request):
    try:
        data = json.loads(request.body)
        total = Decimal(str(data["total"]))
        customer_id = str(data["customer_id"])
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return JsonResponse({"error": "need customer_id and total"}, status=400)
    try:
        with transaction.atomic():
            order = Order.objects.create(customer_id=customer_id, total=total)
            transaction.on_commit(partial(report_order_paid, order))
            if data.get("card") == "declined":  # the charge fails after the row was written
                raise PaymentDeclined()
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    order.refresh_from_db()
    return JsonResponse({"order_id": order.pk, "event_id": order.event_id}, status=201)


urlpatterns = [path("orders/", create_order)]
