"""The scenario file: its schema, loading with line-accurate errors, and expansion into variants.

    models      the frozen pydantic schema (Scenario, targets, sampling, variant specs, thresholds)
    variants    Variant and the expansion steps (matrix, flags, workload parameters)
    loader      YAML to a validated Scenario, every error as ``<file>:<line>: <key path>: ...``
    reference   the JSON Schema and the generated reference page (docs/scenarios.md)

Import from here: ``from contend.scenario import Scenario, load_scenario``.
"""

from __future__ import annotations

from contend.scenario.loader import dump_scenario, load_scenario, parse_scenario
from contend.scenario.models import (
    DOCS_HINT,
    CommandTarget,
    EmbeddedTarget,
    ExternalTarget,
    ReportOptions,
    Sampling,
    Scenario,
    Target,
    ThresholdCheck,
    ThresholdSpec,
    VariantSpec,
    describe_variants,
    to_threshold,
)
from contend.scenario.reference import EXAMPLE, schema, schema_markdown
from contend.scenario.variants import Scalar, ScenarioError, Variant, key_path

__all__ = [
    "DOCS_HINT",
    "EXAMPLE",
    "CommandTarget",
    "EmbeddedTarget",
    "ExternalTarget",
    "ReportOptions",
    "Sampling",
    "Scalar",
    "Scenario",
    "ScenarioError",
    "Target",
    "ThresholdCheck",
    "ThresholdSpec",
    "Variant",
    "VariantSpec",
    "describe_variants",
    "dump_scenario",
    "key_path",
    "load_scenario",
    "parse_scenario",
    "schema",
    "schema_markdown",
    "to_threshold",
]
