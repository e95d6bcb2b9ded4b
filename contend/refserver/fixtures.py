"""Fixtures: a project, a pipeline with a detector and a classifier, images, async_api jobs, a token."""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from contend.refserver import queues, state
from contend.refserver.joblog import MAX_LOG_LENGTH
from contend.refserver.models import (
    Algorithm,
    Job,
    JobLog,
    Pipeline,
    ProcessingService,
    Project,
    SourceImage,
    Token,
)

PIPELINE_SLUG = "quebec_vermont_moths_2023"
DETECTOR_KEY = "example_detector"
CLASSIFIER_KEY = "example_classifier"
DEFAULT_IMAGES_URL = "http://127.0.0.1:8001/images/"
"""Where ``python -m contend.refserver images`` listens in docker-compose.repro.yml."""


def images_url() -> str:
    """Return the images' public base URL: CONTEND_REF_IMAGES_URL (ending in /), else the default."""
    url = os.environ.get("CONTEND_REF_IMAGES_URL") or DEFAULT_IMAGES_URL
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class Fixtures:
    project_id: int
    pipeline_slug: str
    job_ids: list[int]
    image_ids: list[int]


def create_fixtures(jobs: int, images_per_job: int, token: str | None = None,
                    user: str = "contend") -> Fixtures:
    """Create the fixtures and publish one NATS task per image of each job (jobs end in STARTED).

    ``token`` is the API key to register (a new random one when None; read it from the Token table).
    Each image's ``public_base_url`` is ``images_url()``: its ``image_url`` names the image server.
    """
    base_url = images_url()
    with transaction.atomic():
        project = Project.objects.create(name="contend reference project")
        detector, _ = Algorithm.objects.get_or_create(
            key=DETECTOR_KEY, defaults={"name": "Example detector", "task_type": "detection"})
        classifier, _ = Algorithm.objects.get_or_create(
            key=CLASSIFIER_KEY, defaults={"name": "Example classifier", "task_type": "classification"})
        pipeline, _ = Pipeline.objects.get_or_create(
            slug=PIPELINE_SLUG, defaults={"name": "Quebec Vermont moths"})
        pipeline.algorithms.add(detector, classifier)
        pipeline.projects.add(project)
        service = ProcessingService.objects.create(name="contend pull workers", project=project)
        service.pipelines.add(pipeline)
        Token.objects.update_or_create(key=token or secrets.token_hex(20), defaults={"user": user})
        base = datetime.now() - timedelta(minutes=jobs)
        job_rows, all_images = [], []
        for n in range(jobs):
            images = SourceImage.objects.bulk_create(
                SourceImage(project=project, path=f"trap-{n}/{i:05d}.jpg", public_base_url=base_url)
                for i in range(images_per_job))
            job = Job.objects.create(name=f"contend job {n + 1}", project=project, pipeline=pipeline,
                                     job_type_key="ml", dispatch_mode="async_api", status="STARTED",
                                     started_at=datetime.now())
            # Distinct creation times make newest-first ordering deterministic.
            Job.objects.filter(pk=job.pk).update(created_at=base + timedelta(seconds=n))
            _collect(job, len(images))
            _fill_logs(job, min(int(settings.FLAGS["JOB_INITIAL_LOG_LINES"]), MAX_LOG_LENGTH), user)
            state.initialize_job(job.pk, [str(img.pk) for img in images])
            job_rows.append((job, images))
            all_images += [img.pk for img in images]
    flags = settings.FLAGS
    for job, images in job_rows:
        queues.queue_images(job.pk, ({"id": str(img.pk), "image_id": str(img.pk), "image_url": img.url(),
                                      "reply_subject": None} for img in images),
                            int(flags["NATS_TASK_TTR"]), int(flags["NATS_MAX_DELIVER"]))
    return Fixtures(project.pk, pipeline.slug, [job.pk for job, _ in job_rows], all_images)


def _collect(job: Job, total: int) -> None:
    """Mark the collect stage done with the image count, as MLJob.run does before queuing."""
    progress = job.progress
    for stage in progress["stages"]:
        if stage["key"] == "collect":
            stage.update(status="SUCCESS", progress=1.0)
            stage["params"][0]["value"] = total
        else:
            stage["status"] = "STARTED"
    progress["summary"] = {"status": "STARTED", "progress": 1 / len(progress["stages"])}
    Job.objects.filter(pk=job.pk).update(progress=progress)


def history_lines(job_id: int, count: int, user: str) -> list[tuple[datetime, str, str]]:
    """Return ``count`` (time, level, message) log lines a long-running job has written, newest first.

    The messages are the ones the /tasks/, /result/ views and the result task write, one
    two-second step apart, so an array of them has the size and content of a real one.
    """
    now = datetime.now()
    lines = []
    for n in range(count):
        seq = 100000 - n
        stamp = int(now.timestamp() * 1e9) - n
        subject = f"$JS.ACK.job_{job_id}.job-{job_id}-consumer.1.{seq}.{seq}.{stamp}.{n}"
        who = f"user={user}, token_id={uuid.uuid4().hex[:8]}"
        message = [
            f"Queued pipeline result: task_id={uuid.uuid4()}, reply_subject={subject}, {who}",
            f"Processing pipeline result for job {job_id}, reply_subject={subject}",
            f"Updated job {job_id} progress in stage 'process' to {(seq % 97) + 1}%",
            f"Job {job_id} throughput: elapsed={seq}s, processed={seq % 5000}/5000, rate=41.3 imgs/min, "
            "stage=results",
            f"Tasks fetched: requested=24, delivered=24, {who}",
        ][n % 5]
        lines.append((now - timedelta(seconds=2 * n), "INFO", message))
    return lines


def _fill_logs(job: Job, count: int, user: str) -> None:
    """Give the job the log history JOB_INITIAL_LOG_LINES asks for, in the store JOB_LOG_STORE names."""
    if count <= 0:
        return
    history = history_lines(job.pk, count, user)
    if settings.FLAGS["JOB_LOG_STORE"] == "table":
        JobLog.objects.bulk_create(JobLog(job=job, level=level, message=text) for _, level, text in history)
        return
    stdout = [f"[{when:%Y-%m-%d %H:%M:%S}] {level} {message}" for when, level, message in history]
    Job.objects.filter(pk=job.pk).update(logs={"stdout": stdout, "stderr": []})
