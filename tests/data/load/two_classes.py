"""A locustfile for the tests: two user classes, three request names, one of them always failing.

What contend knows of the target comes through the environment: CONTEND_TOKEN, CONTEND_JOB_IDS.
"""

import os

from locust import HttpUser, constant, task

HEADERS = {"Authorization": f"Token {os.environ.get('CONTEND_TOKEN', '')}"}
JOB = (os.environ.get("CONTEND_JOB_IDS") or "1").split(",")[0]  # an external target names no jobs


class Reader(HttpUser):
    wait_time = constant(0)

    @task
    def jobs(self) -> None:
        self.client.get("/api/v2/jobs/", headers=HEADERS, name="jobs")


class Checker(HttpUser):
    wait_time = constant(0)

    @task(2)
    def job(self) -> None:
        self.client.get(f"/api/v2/jobs/{JOB}/", headers=HEADERS, name="job")

    @task
    def missing(self) -> None:
        self.client.get("/api/v2/no-such-page/", headers=HEADERS, name="missing")  # 404: a failure
