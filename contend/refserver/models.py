# ruff: noqa: RUF012  (Django Meta and migration attributes are class-level lists by design)
"""Tables shaped like Antenna's: the hot ``jobs_job`` row, its ``jobs_joblog`` children, and the rest."""

from __future__ import annotations

import logging
from typing import Any

from django.db import models

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
ACTIVE_STATES = ("STARTED", "RETRY")
FAILED_STATES = ("FAILURE", "REVOKED", "UNKNOWN")
DETECTION_TASK_TYPES = ("detection", "localization", "segmentation")
FINALIZABLE_STATES = ("CREATED", "PENDING", "STARTED", "RETRY")  # may auto-finish (Antenna #1337)


def stage_param(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "key": name.lower().replace(" ", "_"), "category": "default", "value": value}


def default_job_progress() -> dict[str, Any]:
    """Return the progress JSON of a new ML job: collect, process and results stages."""
    def stage(name: str, *params: str) -> dict[str, Any]:
        return {"status": "CREATED", "progress": 0.0, "key": name.lower(), "name": name,
                "params": [stage_param(p, 0) for p in params]}

    return {
        "summary": {"status": "CREATED", "progress": 0.0},
        "stages": [stage("Collect", "Total Images"), stage("Process", "Processed", "Remaining", "Failed"),
                   stage("Results", "Captures", "Detections", "Classifications")],
        "errors": [],
        "logs": [],
    }


def empty_logs() -> dict[str, list[str]]:
    return {"stdout": [], "stderr": []}


class Project(models.Model):
    name = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "main_project"


class Algorithm(models.Model):
    name = models.CharField(max_length=255)
    key = models.SlugField(max_length=255, unique=True)
    task_type = models.CharField(max_length=255, default="detection")
    version = models.IntegerField(default=1)

    class Meta:
        db_table = "ml_algorithm"


class Pipeline(models.Model):
    name = models.CharField(max_length=255)
    slug = models.SlugField(max_length=255, unique=True)
    algorithms = models.ManyToManyField(Algorithm, related_name="pipelines",
                                        db_table="ml_pipeline_algorithms")
    projects = models.ManyToManyField(Project, related_name="pipelines", db_table="ml_pipeline_projects")

    class Meta:
        db_table = "ml_pipeline"


class ProcessingService(models.Model):
    name = models.CharField(max_length=255)
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    pipelines = models.ManyToManyField(Pipeline, db_table="ml_processingservice_pipelines")
    last_seen = models.DateTimeField(null=True)
    last_seen_live = models.BooleanField(null=True)

    class Meta:
        db_table = "ml_processingservice"


class SourceImage(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    path = models.CharField(max_length=255)
    public_base_url = models.CharField(max_length=255, default="http://127.0.0.1/images/")
    detections_count = models.IntegerField(null=True)

    class Meta:
        db_table = "main_sourceimage"

    def url(self) -> str:
        return f"{self.public_base_url}{self.path}"


class Detection(models.Model):
    source_image = models.ForeignKey(SourceImage, on_delete=models.CASCADE, related_name="detections")
    bbox = models.JSONField(null=True)
    algorithm = models.ForeignKey(Algorithm, on_delete=models.SET_NULL, null=True)
    timestamp = models.DateTimeField(null=True)
    crop_image_url = models.TextField(null=True)
    inference_time = models.FloatField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "main_detection"


class Classification(models.Model):
    detection = models.ForeignKey(Detection, on_delete=models.CASCADE, related_name="classifications")
    taxon = models.CharField(max_length=255)
    score = models.FloatField(null=True)
    scores = models.JSONField(default=list)
    terminal = models.BooleanField(default=True)
    algorithm = models.ForeignKey(Algorithm, on_delete=models.SET_NULL, null=True)
    timestamp = models.DateTimeField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "main_classification"


class Job(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    name = models.CharField(max_length=255)
    queue = models.CharField(max_length=255, default="default")
    scheduled_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    status = models.CharField(max_length=255, default="CREATED")
    progress = models.JSONField(default=default_job_progress)
    logs = models.JSONField(default=empty_logs)
    params = models.JSONField(null=True)
    result = models.JSONField(null=True)
    task_id = models.CharField(max_length=255, null=True)
    delay = models.IntegerField(default=0)
    limit = models.IntegerField(null=True)
    shuffle = models.BooleanField(default=True)
    job_type_key = models.CharField(max_length=255, default="unknown")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    pipeline = models.ForeignKey(Pipeline, on_delete=models.SET_NULL, null=True, related_name="jobs")
    dispatch_mode = models.CharField(max_length=32, default="internal")

    class Meta:
        db_table = "jobs_job"
        ordering = ["-created_at"]

    @property
    def logger(self) -> logging.Logger:
        """Return this job's process-wide logger (Antenna's ``Job.logger``); see joblog.py."""
        from contend.refserver.joblog import job_logger

        return job_logger(self)


class JobLog(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_entries")
    level = models.CharField(max_length=20)
    message = models.TextField()
    context = models.JSONField(default=dict)

    class Meta:
        db_table = "jobs_joblog"
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["job", "-created_at"], name="jobs_joblog_job_created")]


class Token(models.Model):
    """DRF-style API token: ``Authorization: Token <key>``."""

    key = models.CharField(max_length=40, primary_key=True)
    user = models.CharField(max_length=150)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "authtoken_token"


class PendingImage(models.Model):
    """Stands in for Redis ``job:{id}:pending_images:{stage}``; no FK, so it never locks jobs_job."""

    job_id = models.BigIntegerField()
    stage = models.CharField(max_length=16)
    image_id = models.CharField(max_length=64)

    class Meta:
        db_table = "ref_pending_image"
        constraints = [
            models.UniqueConstraint(fields=["job_id", "stage", "image_id"], name="ref_pending_uniq")]


class FailedImage(models.Model):
    """Stands in for Redis ``job:{id}:failed_images``."""

    job_id = models.BigIntegerField()
    image_id = models.CharField(max_length=64)

    class Meta:
        db_table = "ref_failed_image"
        constraints = [models.UniqueConstraint(fields=["job_id", "image_id"], name="ref_failed_uniq")]


class JobImageTotal(models.Model):
    """Stands in for Redis ``job:{id}:pending_images_total``."""

    job_id = models.BigIntegerField(primary_key=True)
    total = models.IntegerField()

    class Meta:
        db_table = "ref_job_image_total"
