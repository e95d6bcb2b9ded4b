"""Request bodies of the task and result endpoints (Antenna's ami/ml/schemas.py, rebuilt on pydantic 2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AlgorithmReference(_Schema):
    name: str
    key: str


class BoundingBox(_Schema):
    x1: float
    y1: float
    x2: float
    y2: float


class ClassificationResponse(_Schema):
    classification: str
    labels: list[str] | None = None
    scores: list[float] = []
    logits: list[float] | None = None
    inference_time: float | None = None
    algorithm: AlgorithmReference
    terminal: bool = True
    timestamp: datetime


class DetectionResponse(_Schema):
    source_image_id: str
    bbox: BoundingBox | None = None
    inference_time: float | None = None
    algorithm: AlgorithmReference
    timestamp: datetime
    crop_image_url: str | None = None
    classifications: list[ClassificationResponse] = []


class SourceImageResponse(_Schema):
    id: str
    url: str


class PipelineResultsResponse(_Schema):
    pipeline: str
    algorithms: dict[str, Any] = {}
    total_time: float
    source_images: list[SourceImageResponse]
    detections: list[DetectionResponse]
    errors: list[Any] | str | None = None


class PipelineResultsError(_Schema):
    error: str
    image_id: str | None = None


class PipelineTaskResult(_Schema):
    reply_subject: str
    # pydantic v1 (Antenna) tries the union left to right; keep that order.
    result: PipelineResultsResponse | PipelineResultsError = Field(union_mode="left_to_right")


class ResultsRequest(_Schema):
    results: list[PipelineTaskResult]
    client_info: dict[str, Any] | None = None


class TasksRequest(_Schema):
    batch_size: int = Field(ge=1)
    client_info: dict[str, Any] | None = None


class AlgorithmCategoryMap(_Schema):
    data: list[dict[str, Any]] = []
    labels: list[str] = []
    version: str | None = None
    description: str | None = None
    uri: str | None = None


class AlgorithmConfig(_Schema):
    """Antenna's AlgorithmConfigResponse: the registration answer echoes it with these defaults."""

    name: str
    key: str
    description: str | None = None
    task_type: str | None = None
    version: int = 1
    version_name: str | None = None
    uri: str | None = None
    category_map: AlgorithmCategoryMap | None = None


class PipelineStageParam(_Schema):
    name: str
    key: str
    category: str = "default"


class PipelineStage(_Schema):
    key: str
    name: str
    params: list[PipelineStageParam] = []
    description: str | None = None


class PipelineConfig(_Schema):
    name: str
    slug: str
    version: int
    description: str | None = None
    algorithms: list[AlgorithmConfig] = []
    stages: list[PipelineStage] = []


class PipelineRegistrationRequest(_Schema):
    processing_service_name: str
    pipelines: list[PipelineConfig] = []
