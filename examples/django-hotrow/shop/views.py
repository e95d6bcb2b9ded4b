"""The shop's views: one purchase that locks the product row while it pays, one that does not.

``buy_locked`` is the hot-row pattern contend is built to find: ``select_for_update`` on one
popular product, then a slow call (the payment) inside the transaction, so every other purchase of
that product waits on the row lock. ``buy_free`` records the order without touching the product
row (the stock is counted from the orders), so purchases never wait on each other.
"""

import time

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse

from shop.models import Order, Product


def pay(amount: int) -> None:
    """Stand-in for a payment provider's API call."""
    time.sleep(settings.PAYMENT_S)


def buy_locked(product_id: int) -> int:
    with transaction.atomic():
        product = Product.objects.select_for_update().get(pk=product_id)
        pay(1)
        product.stock -= 1
        product.sold += 1
        product.save(update_fields=["stock", "sold"])
        return Order.objects.create(product=product).pk


def buy_free(product_id: int) -> int:
    product = Product.objects.get(pk=product_id)
    pay(1)
    return Order.objects.create(product=product).pk


def buy(request: HttpRequest, product_id: int) -> JsonResponse:
    view = buy_locked if settings.BUY_VIEW == "locked" else buy_free
    return JsonResponse({"order": view(product_id)})


def product(request: HttpRequest, product_id: int) -> JsonResponse:
    p = Product.objects.get(pk=product_id)
    return JsonResponse({"id": p.pk, "name": p.name, "stock": p.stock})
