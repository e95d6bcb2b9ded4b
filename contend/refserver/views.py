"""The wire contract of Antenna's JobViewSet: list, detail, /tasks/ and /result/, with DRF's shapes.

Each view runs inside the request transaction when ATOMIC_REQUESTS is on (Django wraps it), so a
job log line written here holds the job row's lock until the view returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import nats
from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import HttpRequest, JsonResponse
from pydantic import BaseModel, ValidationError

from contend.refserver import queues
from contend.refserver.models import ACTIVE_STATES, FAILED_STATES, FINAL_STATES, Job, JobLog, Token
from contend.refserver.schemas import ResultsRequest, TasksRequest

PAGE_SIZE = 10
CUTOFF_HOURS = 72
log = logging.getLogger("contend.refserver.views")
View = Callable[..., JsonResponse]


def _error(status: int, detail: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"detail": detail, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Token"
    return response


def api_view(*methods: str) -> Callable[[View], View]:
    """Token authentication and method check, as DRF's TokenAuthentication and APIView do."""
    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            header = request.META.get("HTTP_AUTHORIZATION", "").split()
            if not header or header[0].lower() != "token":
                return _error(401, "Authentication credentials were not provided.")
            if len(header) != 2:
                return _error(401, "Invalid token header. No credentials provided.")
            token = Token.objects.filter(key=header[1]).first()
            if token is None:
                return _error(401, "Invalid token.")
            if request.method not in methods:
                return _error(405, f'Method "{request.method}" not allowed.')
            request.token = token
            return view(request, *args, **kwargs)
        return wrapper
    return decorate


def _who(request: HttpRequest) -> str:
    token: Token = request.token
    # Antenna logs 8 characters of the key; a digest says which token without revealing any of it.
    return f"user={token.user}, token_id={hashlib.sha256(str(token.key).encode()).hexdigest()[:8]}"


def _body(request: HttpRequest, schema: type[BaseModel]) -> BaseModel | JsonResponse:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as exc:
        return _error(400, f"JSON parse error - {exc}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "non_field_errors"
            where = ".".join(str(p) for p in err["loc"][1:])
            message = "This field is required." if err["type"] == "missing" and not where else err["msg"]
            errors.setdefault(field, []).append(f"{where}: {message}" if where else message)
        return JsonResponse(errors, status=400)


def _get_job(pk: int) -> Job | JsonResponse:
    job = Job.objects.select_related("pipeline", "project").filter(pk=pk).first()
    return job if job is not None else _error(404, "No Job matches the given query.")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("", "1", "true", "yes")


def _job_queryset(request: HttpRequest) -> QuerySet[Job]:
    params = request.GET
    qs = Job.objects.select_related("pipeline").exclude(
        status__in=FAILED_STATES,
        updated_at__lt=datetime.now() - timedelta(hours=int(params.get("cutoff_hours", CUTOFF_HOURS))),
    )
    for name in ("status", "dispatch_mode", "job_type_key", "pipeline__slug"):
        if params.get(name):
            qs = qs.filter(**{name: params[name]})
    project = params.get("project_id") or params.get("project")
    if project:
        qs = qs.filter(project_id=int(project))
    if params.get("pipeline__slug__in"):
        qs = qs.filter(pipeline__slug__in=params["pipeline__slug__in"].split(","))
    if _truthy(params.get("incomplete_only")):
        finished = Q()
        for state in FINAL_STATES:
            finished |= Q(progress__contains={"stages": [{"key": "results", "status": state}]})
        qs = qs.exclude(status__in=FINAL_STATES).exclude(finished)
    return qs


def _serialize(job: Job, logs: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "id": job.pk, "name": job.name, "status": job.status, "dispatch_mode": job.dispatch_mode,
        "job_type_key": job.job_type_key, "project": job.project_id,
        "pipeline": job.pipeline_id, "pipeline_slug": job.pipeline.slug if job.pipeline else None,
        "progress": job.progress, "logs": logs if logs is not None else job.logs,
        "created_at": job.created_at, "updated_at": job.updated_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "user_permissions": [],
    }


@api_view("GET")
def job_list(request: HttpRequest) -> JsonResponse:
    params = request.GET
    ids_only = _truthy(params.get("ids_only"))
    qs = _job_queryset(request)
    default_limit = PAGE_SIZE
    if ids_only:
        order = settings.FLAGS["JOBS_POLL_ORDER"]
        qs = {"newest": qs.order_by("-created_at", "-pk"), "oldest": qs.order_by("created_at", "pk"),
              "random": qs.order_by("?")}[order]
        if "limit" not in params and "page_size" not in params:
            default_limit = int(settings.FLAGS["JOBS_POLL_DEFAULT_LIMIT"])
    try:
        limit = max(1, int(params.get("limit", default_limit)))
        offset = max(0, int(params.get("offset", 0)))
    except ValueError:
        return _error(400, "limit and offset must be integers")
    count = qs.count()
    page = list(qs[offset:offset + limit])
    results = ([{"id": j.pk, "pipeline_slug": j.pipeline.slug if j.pipeline else None, "user_permissions": []}
                for j in page] if ids_only else [_serialize(j) for j in page])

    def link(new_offset: int) -> str:
        query = params.copy()
        query["limit"], query["offset"] = str(limit), str(new_offset)
        return str(request.build_absolute_uri(f"{request.path}?{urlencode(query)}"))

    return JsonResponse({
        "count": count,
        "next": link(offset + limit) if offset + limit < count else None,
        "previous": link(max(0, offset - limit)) if offset > 0 else None,
        "results": results,
        "user_permissions": [],
    })


@api_view("GET")
def job_detail(request: HttpRequest, pk: int) -> JsonResponse:
    job = _get_job(pk)
    if isinstance(job, JsonResponse):
        return job
    limit = min(int(request.GET.get("logs_limit", 1000)), 5000)
    entries = list(JobLog.objects.filter(job_id=job.pk)[:limit])
    logs = None
    if entries:
        logs = {"stdout": [f"[{e.created_at:%Y-%m-%d %H:%M:%S}] {e.level} {e.message}" for e in entries],
                "stderr": [e.message for e in entries if e.level in ("ERROR", "CRITICAL")]}
    return JsonResponse(_serialize(job, logs))


@api_view("POST")
def job_tasks(request: HttpRequest, pk: int) -> JsonResponse:
    job = _get_job(pk)
    if isinstance(job, JsonResponse):
        return job
    body = _body(request, TasksRequest)
    if isinstance(body, JsonResponse):
        return body
    assert isinstance(body, TasksRequest)
    if job.dispatch_mode != "async_api":
        return _error(400, "Only async_api jobs have fetchable tasks")
    if job.status not in ACTIVE_STATES:
        job.logger.info(f"Tasks requested for non-active job (status={job.status}); returning empty. "
                        f"{_who(request)}")
        return JsonResponse({"tasks": []})
    if job.pipeline is None:
        return _error(400, "Job has no pipeline")
    flags = settings.FLAGS
    try:
        tasks = queues.reserve_tasks(job.pk, body.batch_size, int(flags["NATS_TASK_TTR"]),
                                     int(flags["NATS_MAX_DELIVER"]))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        job.logger.warning(f"Task queue unavailable while fetching tasks: {exc}")
        return JsonResponse({"error": "Task queue temporarily unavailable"}, status=503)
    if tasks:
        job.logger.info(f"Tasks fetched: requested={body.batch_size}, delivered={len(tasks)}, "
                        f"{_who(request)}")
    return JsonResponse({"tasks": tasks})


@api_view("POST")
def job_result(request: HttpRequest, pk: int) -> JsonResponse:
    job = _get_job(pk)
    if isinstance(job, JsonResponse):
        return job
    body = _body(request, ResultsRequest)
    if isinstance(body, JsonResponse):
        return body
    assert isinstance(body, ResultsRequest)
    queued = []
    for item in body.results:
        try:
            result = item.result.model_dump(mode="json")
            task_id = queues.publisher.publish(job.pk, result, item.reply_subject)
        except (OSError, TimeoutError, nats.errors.Error):
            return JsonResponse({"status": "error", "job_id": job.pk,
                                 "detail": "Task queue temporarily unavailable"}, status=503)
        log.info("Queued pipeline result for job %s", job.pk)
        job.logger.info(f"Queued pipeline result: task_id={task_id}, reply_subject={item.reply_subject}, "
                        f"{_who(request)}")
        queued.append({"reply_subject": item.reply_subject, "status": "queued", "task_id": task_id})
    return JsonResponse({"status": "accepted", "job_id": job.pk, "results_queued": len(queued),
                         "tasks": queued})
