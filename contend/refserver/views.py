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
from contend.refserver.models import (
    ACTIVE_STATES,
    DETECTION_TASK_TYPES,
    FAILED_STATES,
    FINAL_STATES,
    Algorithm,
    Job,
    JobLog,
    Pipeline,
    ProcessingService,
    Project,
    Token,
)
from contend.refserver.schemas import PipelineRegistrationRequest, ResultsRequest, TasksRequest

PAGE_SIZE = 10
CUTOFF_HOURS = 72
log = logging.getLogger("contend.refserver.views")
View = Callable[..., JsonResponse]


def _error(status: int, detail: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"detail": detail, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Token"
    return response


def api_view(*methods: str, anonymous_get: bool = False) -> Callable[[View], View]:
    """Token authentication, permission and method check, as DRF's TokenAuthentication and APIView do.

    ``anonymous_get``: a request without a token may read (Antenna's IsActiveStaffOrReadOnly); a
    token that is wrong is refused on every method.
    """
    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            header = request.META.get("HTTP_AUTHORIZATION", "").split()
            token = None
            if header and header[0].lower() == "token":
                if len(header) != 2:
                    return _error(401, "Invalid token header. No credentials provided.")
                token = Token.objects.filter(key=header[1]).first()
                if token is None:
                    return _error(401, "Invalid token.")
            if token is None and not (anonymous_get and request.method == "GET"):
                return _error(401, "Authentication credentials were not provided.")
            if request.method not in methods:
                return _error(405, f'Method "{request.method}" not allowed.')
            request.token = token
            return view(request, *args, **kwargs)
        return wrapper
    return decorate


def _cause(exc: BaseException) -> str:
    """Return an exception's class and message (some NATS and asyncio errors have no message)."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _who(request: HttpRequest) -> str:
    token: Token = request.token
    # Antenna logs 8 characters of the key; a digest says which token without revealing any of it.
    return f"user={token.user}, token_id={hashlib.sha256(str(token.key).encode()).hexdigest()[:8]}"


def _data(request: HttpRequest) -> Any:
    """Return the parsed body as DRF's default parsers would, or the 400/415 answer they give."""
    media_type = request.content_type or ""
    if not request.body:
        return {}
    if media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}  # a form carries none of the JSON fields: validation answers 400
    if media_type != "application/json" and not media_type.endswith("+json"):
        return _error(415, f'Unsupported media type "{request.META.get("CONTENT_TYPE", "")}" in request.')
    try:
        return json.loads(request.body)
    except ValueError as exc:
        return _error(400, f"JSON parse error - {exc}")


def _drf_errors(exc: ValidationError) -> dict[str, list[str]]:
    """Return DRF serializer-field errors: ``{field: [message, ...]}``."""
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "non_field_errors"
        where = ".".join(str(p) for p in err["loc"][1:])
        message = "This field is required." if err["type"] == "missing" and not where else err["msg"]
        if err["type"] == "greater_than_equal" and not where:
            message = f"Ensure this value is greater than or equal to {err['ctx']['ge']}."
        elif err["type"].startswith("int_") and not where:
            message = "A valid integer is required."
        errors.setdefault(field, []).append(f"{where}: {message}" if where else message)
    return errors


_UNION_TAGS = {"PipelineResultsResponse", "PipelineResultsError"}


def _schema_errors(exc: ValidationError) -> dict[str, Any]:
    """Return a schema field's errors as Antenna's pydantic field gives them: {field: [{loc, msg, type}]}.

    ``loc`` starts inside the field's value; pydantic 1's names for a missing field are kept.
    """
    errors: dict[str, Any] = {}
    for err in exc.errors():
        field, *loc = err["loc"] or ("non_field_errors",)
        if not loc:
            errors.setdefault(str(field), []).append("This field is required.")
            continue
        missing = err["type"] == "missing"
        errors.setdefault(str(field), []).append({
            "loc": [part for part in loc if part not in _UNION_TAGS],
            "msg": "field required" if missing else err["msg"],
            "type": "value_error.missing" if missing else err["type"],
        })
    return errors


def _body(request: HttpRequest, schema: type[BaseModel],
          schema_fields: bool = False) -> BaseModel | JsonResponse:
    data = _data(request)
    if isinstance(data, JsonResponse):
        return data
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = _schema_errors(exc) if schema_fields else _drf_errors(exc)
        return JsonResponse(errors, status=400, safe=False)


def _get_job(pk: int) -> Job | JsonResponse:
    job = Job.objects.select_related("pipeline", "project").filter(pk=pk).first()
    return job if job is not None else _error(404, "Not found.")


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


@api_view("GET", anonymous_get=True)
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
    return _page(request, qs, default_limit, lambda j: (
        {"id": j.pk, "pipeline_slug": j.pipeline.slug if j.pipeline else None, "user_permissions": []}
        if ids_only else _serialize(j)))


def _page(request: HttpRequest, rows: QuerySet[Any], default_limit: int,
          serialize: Callable[[Any], dict[str, Any]]) -> JsonResponse:
    """Return one LimitOffset page of ``rows`` with Antenna's envelope."""
    params = request.GET
    try:
        limit = max(1, int(params.get("limit", default_limit)))
        offset = max(0, int(params.get("offset", 0)))
    except ValueError:
        return _error(400, "limit and offset must be integers")
    count = rows.count()
    results = [serialize(row) for row in rows[offset:offset + limit]]

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


@api_view("GET", anonymous_get=True)
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
    body = _body(request, TasksRequest)
    if isinstance(body, JsonResponse):
        return body
    assert isinstance(body, TasksRequest)
    job = _get_job(pk)
    if isinstance(job, JsonResponse):
        return job
    if job.dispatch_mode != "async_api":
        # DRF's ValidationError("...") answers a bare list of messages.
        return JsonResponse(["Only async_api jobs have fetchable tasks"], status=400, safe=False)
    if job.status not in ACTIVE_STATES:
        job.logger.info(f"Tasks requested for non-active job (status={job.status}); returning empty. "
                        f"{_who(request)}")
        return JsonResponse({"tasks": []})
    if job.pipeline is None:
        return JsonResponse(["This job does not have a pipeline configured"], status=400, safe=False)
    flags = settings.FLAGS
    try:
        tasks = queues.reserve_tasks(job.pk, body.batch_size, int(flags["NATS_TASK_TTR"]),
                                     int(flags["NATS_MAX_DELIVER"]))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        job.logger.warning(f"Task queue unavailable while fetching tasks: {_cause(exc)}")
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
    body = _body(request, ResultsRequest, schema_fields=True)
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


@api_view("GET", anonymous_get=True)
def project_list(request: HttpRequest) -> JsonResponse:
    return _page(request, Project.objects.order_by("pk"), PAGE_SIZE, lambda p: {
        "id": p.pk, "name": p.name, "created_at": p.created_at, "updated_at": p.updated_at,
        "user_permissions": []})


@api_view("POST")
def project_pipelines(request: HttpRequest, pk: int) -> JsonResponse:
    """Register a pull-mode processing service's pipelines for a project (ADC's registration).

    The answer has Antenna's semantics (``ProcessingService.create_pipelines``): a pipeline's slug is
    listed in ``pipelines_created`` when it was not yet enabled for this project, the key of each
    algorithm newly attached to a pipeline is listed there too, and ``algorithms_created`` stays empty.
    """
    body = _body(request, PipelineRegistrationRequest)
    if isinstance(body, JsonResponse):
        return body
    assert isinstance(body, PipelineRegistrationRequest)
    project = Project.objects.filter(pk=pk).first()
    if project is None:
        return _error(404, "Not found.")
    service = ProcessingService.objects.filter(name=body.processing_service_name).first()
    if service is None:
        service = ProcessingService.objects.create(name=body.processing_service_name, project=project)
    created: list[str] = []
    for config in body.pipelines:
        pipeline, _ = Pipeline.objects.get_or_create(slug=config.slug, defaults={"name": config.name})
        if not pipeline.projects.filter(pk=project.pk).exists():
            # Antenna's flag is the project-pipeline config's get_or_create, which overwrites the
            # pipeline's own: a known pipeline newly enabled for the project is listed as created.
            pipeline.projects.add(project)
            created.append(pipeline.slug)
        service.pipelines.add(pipeline)
        known = {a.key for a in pipeline.algorithms.all()}
        for spec in config.algorithms:
            task_type = spec.task_type or "detection"  # the column's default when none is given
            algorithm, _ = Algorithm.objects.update_or_create(
                key=spec.key, defaults={"name": spec.name, "task_type": task_type, "version": spec.version})
            if task_type in DETECTION_TASK_TYPES:
                # A pipeline has one detector: a real one replaces the fixtures' example (docs/refserver.md).
                pipeline.algorithms.remove(*pipeline.algorithms.filter(task_type__in=DETECTION_TASK_TYPES)
                                          .exclude(pk=algorithm.pk))
            if spec.key not in known:
                pipeline.algorithms.add(algorithm)
                created.append(spec.key)  # under pipelines_created, as Antenna lists it
    ProcessingService.objects.filter(pk=service.pk).update(last_seen=datetime.now(), last_seen_live=True)
    return JsonResponse({"timestamp": datetime.now(), "success": True, "error": None,
                         "pipelines": [c.model_dump(mode="json") for c in body.pipelines],
                         "pipelines_created": created, "algorithms_created": []}, status=201)
