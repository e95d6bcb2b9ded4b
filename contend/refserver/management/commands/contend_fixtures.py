"""``manage.py contend_fixtures``: create_fixtures from the command line (token from CONTEND_REF_TOKEN)."""

from __future__ import annotations

import json
import os
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from contend.refserver.fixtures import create_fixtures


class Command(BaseCommand):
    help = "Create a project, a pipeline, images, async_api jobs in STARTED with NATS tasks, and a token."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--jobs", type=int, default=1)
        parser.add_argument("--images", type=int, default=100)

    def handle(self, *args: Any, **options: Any) -> None:
        made = create_fixtures(options["jobs"], options["images"], token=os.environ.get("CONTEND_REF_TOKEN"))
        self.stdout.write(json.dumps({"project_id": made.project_id, "pipeline_slug": made.pipeline_slug,
                                      "job_ids": made.job_ids}))
