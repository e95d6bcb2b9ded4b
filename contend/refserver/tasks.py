"""The result task a worker runs per queued result (Antenna's process_nats_pipeline_result), step by step."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import transaction

from contend.refserver import queues, state
from contend.refserver.models import (
    DETECTION_TASK_TYPES,
    Algorithm,
    Classification,
    Detection,
    Job,
    SourceImage,
)
from contend.refserver.progress import update_job_progress

FAILURE_THRESHOLD = 0.5
log = logging.getLogger("contend.refserver.tasks")


class PipelineNotConfigured(Exception):
    """An algorithm key of a result is not registered on the job's pipeline."""


def complete_state(progress: state.StateProgress) -> str:
    return "FAILURE" if progress.total and progress.failed / progress.total > FAILURE_THRESHOLD else "SUCCESS"


def process_result(job_id: int, result_data: dict[str, Any], reply_subject: str) -> None:
    """Process one result; ack its task only at the very end; any failure means no ack (redelivery)."""
    job: Job | None = None
    try:
        if "error" in result_data:
            image_id = result_data.get("image_id")
            processed = failed = {str(image_id)} if image_id is not None else set()
        else:
            processed = {str(img["id"]) for img in result_data.get("source_images", [])}
            failed = set()
        progress = state.update_state(job_id, processed, "process", failed_image_ids=failed)
        if progress is None:
            _fail_job(job_id, "Redis state missing for job")
            queues.acknowledge(reply_subject)
            return
        update_job_progress(job_id, "process", progress.percentage, complete_state(progress),
                            processed=progress.total - progress.remaining, remaining=progress.remaining,
                            failed=progress.failed)
        try:
            job = Job.objects.select_related("pipeline").get(pk=job_id)
        except Job.DoesNotExist:
            log.error("job %s not found, acking its result", job_id)
            queues.acknowledge(reply_subject)
            return
        job.logger.info(f"Processing pipeline result for job {job_id}, reply_subject={reply_subject}")
        job.logger.info(f"Job {job_id} progress: {progress.total - progress.remaining}/{progress.total} "
                        "images processed")
        counts = {"detections": 0, "classifications": 0, "captures": 0}
        if "error" in result_data:
            job.logger.error(f"Pipeline returned error for image {result_data.get('image_id')}: "
                             f"{result_data['error']}")
        else:
            counts = save_results(job, result_data)
            job.logger.info(f"Successfully saved results for job {job_id}")
        results = state.update_state(job_id, processed, "results")
        if results is None:
            _fail_job(job_id, "Redis state missing for job")
            queues.acknowledge(reply_subject)
            return
        if results.newly_removed == 0:
            counts = {key: 0 for key in counts}  # a replay adds nothing
        complete = update_job_progress(job_id, "results", results.percentage, complete_state(results),
                                       add_counts=True, **counts)
        if complete:
            job.logger.info(f"Job {job_id} is_complete()=True, cleaning up")
            state.cleanup(job_id)
            queues.delete_job_queue(job_id)
        queues.acknowledge(reply_subject)
        job.logger.info(f"Successfully acknowledged task via NATS: {reply_subject}")
    except Exception as exc:
        log.exception("result task for job %s failed", job_id)
        if job is not None:
            job.logger.error(f"Error processing pipeline result for job {job_id}: {exc}. "
                             "NATS will re-deliver the task message.")


def _fail_job(job_id: int, reason: str) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status in ("CANCELING", "SUCCESS", "FAILURE", "REVOKED"):
            return
        job.status = "FAILURE"
        job.save(update_fields=["status", "progress", "finished_at"])
    job.logger.error(f"Job {job_id} failed: {reason}")


def save_results(job: Job, result: dict[str, Any]) -> dict[str, int]:
    """Write detections and classifications of one result, with Antenna's log lines; return counts."""
    started = time.monotonic()
    job.logger.info(f"Saving results for job {job.pk} from pipeline {result.get('pipeline')}")
    pipeline = job.pipeline
    algorithms = {a.key: a for a in Algorithm.objects.filter(pipelines=pipeline)} if pipeline else {}
    job.logger.info(f"Algorithms registered for pipeline: {', '.join(sorted(algorithms))}")
    detectors = [a for a in algorithms.values() if a.task_type in DETECTION_TASK_TYPES]
    if len(detectors) != 1:
        raise PipelineNotConfigured(f"pipeline {pipeline} must have exactly one detection algorithm")
    images = {str(img.pk): img for img in SourceImage.objects.filter(
        pk__in=[int(i["id"]) for i in result.get("source_images", []) if str(i["id"]).isdigit()])}
    for missing in {str(i["id"]) for i in result.get("source_images", [])} - set(images):
        job.logger.error(f"Source image {missing} not found, skipping")
    detections = classifications = 0
    for det in result.get("detections") or []:
        image = images.get(str(det["source_image_id"]))
        if image is None:
            continue
        algorithm = algorithms.get(det["algorithm"]["key"])
        if algorithm is None:
            raise PipelineNotConfigured(f"algorithm {det['algorithm']['key']} is not on the pipeline")
        detection, created = Detection.objects.get_or_create(
            source_image=image, bbox=det.get("bbox"),
            defaults={"algorithm": algorithm, "timestamp": det.get("timestamp"),
                      "crop_image_url": det.get("crop_image_url"),
                      "inference_time": det.get("inference_time")},
        )
        detections += int(created)
        for cls in det.get("classifications") or []:
            cls_algorithm = algorithms.get(cls["algorithm"]["key"])
            if cls_algorithm is None:
                raise PipelineNotConfigured(f"algorithm {cls['algorithm']['key']} is not on the pipeline")
            scores = cls.get("scores") or []
            Classification.objects.create(
                detection=detection, taxon=cls["classification"], score=max(scores, default=None),
                scores=scores, terminal=cls.get("terminal", True), algorithm=cls_algorithm,
                timestamp=cls.get("timestamp"),
            )
            classifications += 1
    for image in images.values():
        if not any(str(d["source_image_id"]) == str(image.pk) for d in result.get("detections") or []):
            Detection.objects.get_or_create(source_image=image, bbox=None, algorithm=detectors[0])
    job.logger.info(f"Created {detections} new detections")
    job.logger.info(f"Created {classifications} classifications")
    for image in images.values():
        job.logger.info(f"Determining occurrences for source image {image.pk}")
        image.detections_count = image.detections.exclude(bbox=None).count()
        image.save(update_fields=["detections_count"])
    job.logger.info(f"Created {detections} new occurrences")
    job.logger.info(f"Updated {detections} detections with occurrences")
    job.logger.info("Creating detection images in sub-task")
    job.logger.info(f"Saved results for job {job.pk} in {time.monotonic() - started:.2f} seconds")
    return {"detections": detections, "classifications": classifications, "captures": len(images)}

