"""Shoppers of the hot-row shop: most buy the popular product, some look at it first.

contend gives the shop's address as ``host`` and the hot product's id in CONTEND_JOB_IDS (from the
command target's fixtures); nothing here knows about contend otherwise.
"""

import os

from locust import HttpUser, between, task

HOT = (os.environ.get("CONTEND_JOB_IDS") or "1").split(",")[0]


class Shopper(HttpUser):
    wait_time = between(0.01, 0.05)

    @task(3)
    def buy(self) -> None:
        self.client.post(f"/buy/{HOT}/", name="/buy/[id]/")

    @task(1)
    def look(self) -> None:
        self.client.get(f"/products/{HOT}/", name="/products/[id]/")
