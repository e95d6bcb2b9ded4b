"""The scenario format: good files load, each kind of mistake gives its exact message and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contend.errors import ConfigError, UnsafeTargetError
from contend.flags import PRESETS
from contend.load.config import BatchedPost, PullWorkers
from contend.scenario import (
    Scenario,
    describe_variants,
    dump_scenario,
    load_scenario,
    parse_scenario,
    schema,
    schema_markdown,
)
from tests.conftest import contend

DATA = Path(__file__).parent / "data" / "scenarios"
ROOT = Path(__file__).parent.parent

W = "name: x\nworkloads:\n  - kind: batched_post\n"  # lines 1-3; the mistake starts on line 4


def test_good_file_with_named_variants() -> None:
    scenario = load_scenario(DATA / "log-persist.yaml")
    variants = scenario.expand()
    assert [v.name for v in variants] == ["logs-on", "logs-off"]
    on, off = variants
    assert (on.baseline, off.baseline) == (False, True)
    assert on.flags["JOB_LOG_PERSIST_ENABLED"] == "true" and off.flags["JOB_LOG_PERSIST_ENABLED"] == "false"
    # preset pr-1261, then the target's concurrency fields, then the variant's flags
    assert on.flags["PROGRESS_LOCK"] == PRESETS["pr-1261"][1]["PROGRESS_LOCK"]
    assert on.flags["WEB_CONCURRENCY"] == "1" and on.flags["ML_WORKER_CONCURRENCY"] == "8"
    assert on.repetitions == off.repetitions == 2
    assert on.workloads == (BatchedPost(batch=50, concurrency=10, rounds=1, timeout_s=30),)
    assert [str(t) for t in on.thresholds] == ["post_ok_ratio == 1", "latency_p95_s <= 3x baseline"]
    assert [str(t) for t in off.thresholds] == ["post_ok_ratio == 1", "edges_max < 5"]


def test_matrix_expands_to_the_product_with_readable_names() -> None:
    scenario = load_scenario(DATA / "sweep.yaml")
    variants = scenario.expand()
    assert len(variants) == 2 * 2 * 5
    assert variants[0].name == "preset=pr-1261,JOB_LOG_PERSIST_ENABLED=false,batched_post.concurrency=1"
    assert variants[-1].name == "preset=pre-1261,JOB_LOG_PERSIST_ENABLED=true,batched_post.concurrency=20"
    assert [v.baseline for v in variants].count(True) == 1 and variants[0].baseline
    assert len({v.name for v in variants}) == 20
    last = variants[-1]
    assert last.preset == "pre-1261"
    assert last.flags["PROGRESS_LOCK"] == "select_for_update"  # from the pre-1261 preset
    assert last.flags["CACHALOT"] == "off"  # the target's flags apply to every variant; 'off' stays a word
    assert last.params == {"batched_post.concurrency": 20}
    batched, pull = last.workloads
    assert isinstance(batched, BatchedPost) and isinstance(pull, PullWorkers)
    assert (batched.concurrency, batched.duration_s, batched.rounds) == (20, 20.0, None)
    assert pull == PullWorkers(pollers=2, duration_s=20)
    # the scoped threshold reaches only the variants its pattern matches
    scoped = [v.name for v in variants if len(v.thresholds) == 2]
    assert len(scoped) == 10 and all("JOB_LOG_PERSIST_ENABLED=false" in n for n in scoped)


def test_unprefixed_matrix_parameter_sets_every_workload_that_has_it() -> None:
    scenario = parse_scenario(
        "name: x\nworkloads:\n  - {kind: batched_post, duration_s: 5}\n  - {kind: pull_workers}\n"
        "matrix:\n  duration_s: [5, 10]\n")
    second = scenario.expand()[1]
    assert second.name == "duration_s=10"
    assert [w.duration_s for w in second.workloads] == [10.0, 10.0]


def test_external_target_and_default_variant() -> None:
    scenario = load_scenario(DATA / "external.yaml")
    (only,) = scenario.expand()
    assert (only.name, only.baseline, only.flags, only.external) == ("default", True, {}, True)
    assert scenario.sampling.pyspy is False and scenario.sampling.pg_interval_s == 0.5


def test_dump_round_trips() -> None:
    for name in ("log-persist", "sweep", "external"):
        scenario = load_scenario(DATA / f"{name}.yaml")
        again = parse_scenario(dump_scenario(scenario), "scenario.yaml")
        assert again == scenario
        assert [v.name for v in again.expand()] == [v.name for v in scenario.expand()]


def test_scenario_is_frozen() -> None:
    scenario = load_scenario(DATA / "external.yaml")
    with pytest.raises(ValueError, match="frozen"):
        scenario.name = "other"  # type: ignore[misc]


MISTAKES = [
    # (text, expected message, expected hint or None)
    (W + "    concurancy: 10\n",
     "s.yaml:4: workloads[0].concurancy: unknown key (did you mean 'concurrency'?)",
     "valid keys here: arrival_rate, batch, body, classifications_per_detection, concurrency, "
     "detections_per_image, duration_s, job, kind, rounds, timeout_s"),
    (W + "varients: []\n", "s.yaml:4: varients: unknown key (did you mean 'variants'?)", None),
    (W + "    body: fancy\n",
     "s.yaml:4: workloads[0].body: Input should be 'error' or 'realistic' (got 'fancy')", None),
    (W + "    rounds: 2\n    duration_s: 5\n",
     "s.yaml:3: workloads[0]: give exactly one of rounds or duration_s", None),
    ("name: x\nworkloads:\n  - kind: batched_pots\n",
     "s.yaml:3: workloads[0].kind: unknown kind 'batched_pots'; expected one of 'batched_post', "
     "'pull_workers', 'locustfile', 'command'", None),
    ("name: x\nworkloads:\n  - batch: 5\n",
     "s.yaml:3: workloads[0]: missing 'kind' (one of batched_post, pull_workers, locustfile, command)",
     None),
    ("name: x\nworkloads: []\n",
     "s.yaml:2: workloads: List should have at least 1 item after validation, not 0", None),
    ("workloads:\n  - kind: batched_post\n", "s.yaml:1: name: missing required key", None),
    (W + "name: y\n", "s.yaml:4: name: duplicate key (first at line 1)", "remove one of the two"),
    (W + "  - [\n", "s.yaml:5: invalid YAML: expected the node content, but found '<stream end>'",
     "check the indentation and the quoting around this line"),
    ("- a\n", "s.yaml:1: a scenario is a mapping of keys (name:, workloads:, ...)", None),
    ("", "s.yaml:1: the file is empty", None),
    # flags, checked by contend.flags
    (W + "variants:\n  - name: a\n    flags: {JOB_LOG_PERSIST_ENABLD: true}\n",
     "s.yaml:6: variants[0].flags.JOB_LOG_PERSIST_ENABLD: unknown flag 'JOB_LOG_PERSIST_ENABLD' "
     "(did you mean 'JOB_LOG_PERSIST_ENABLED'?)", "run `contend flags` to list every flag and its values"),
    (W + "variants:\n  - name: a\n    flags:\n      PROGRESS_LOCK: sometimes\n",
     "s.yaml:7: variants[0].flags.PROGRESS_LOCK: flag PROGRESS_LOCK: 'sometimes' is not allowed "
     "(allowed: select_for_update|none|guarded|none_full_save|optimistic|atomic)", None),
    (W + "target:\n  preset: pr-9999\n",
     "s.yaml:5: target.preset: unknown preset 'pr-9999' (allowed: pre-1261, pr-1261, pr-1261-logs-off, "
     "joblog-1259, head)", "run `contend flags` to list the presets"),
    (W + "matrix:\n  NATS_TASK_TTR: [30, 0]\n",
     "s.yaml:5: matrix.NATS_TASK_TTR: flag NATS_TASK_TTR: '0' is not allowed (allowed: integer >= 1)", None),
    (W + "target:\n  web_concurrency: 0\n",
     "s.yaml:5: target.web_concurrency: Input should be greater than 0 (got 0)", None),
    # variants and matrix
    (W + "variants:\n  - name: a\n    baseline: true\n  - name: b\n    baseline: true\n",
     "s.yaml:4: variants: more than one variant says baseline: true", None),
    (W + "variants:\n  - name: a\n  - name: a\n",
     "s.yaml:4: variants: variant names must be unique; repeated: a", None),
    (W + "variants:\n  - name: a/b\n",
     "s.yaml:5: variants[0].name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._=,+:@-]*$' "
     "(got 'a/b')", None),
    (W + "matrix: {CACHALOT: [on, off]}\nvariants:\n  - name: a\n",
     "s.yaml:4: matrix: give either 'variants' or 'matrix', not both", None),
    (W + "matrix:\n  concurency: [1, 2]\n",
     "s.yaml:5: matrix.concurency: no workload has a parameter 'concurency' (did you mean 'concurrency'?)",
     None),
    (W + "matrix:\n  concurrency: [1, 0]\n",
     "s.yaml:5: matrix.concurrency: Input should be greater than 0 (setting concurrency=0 on the "
     "batched_post workload)", None),
    (W + "matrix:\n  concurrency: []\n",
     "s.yaml:5: matrix.concurrency: List should have at least 1 item after validation, not 0", None),
    (W + "matrix:\n  CACHALOT: [on, off, on]\n",
     "s.yaml:5: matrix.CACHALOT: each value once; repeated: on", None),
    ("name: x\nworkloads:\n  - kind: pull_workers\nmatrix:\n  pipeline_slug: [a, 'b c']\n",
     "s.yaml:4: matrix: the variant name 'pipeline_slug=b c' cannot name a folder",
     "use values without spaces, '/' or '~'"),
    (W + "variants:\n  - name: a\n    params: {pollers: 3}\n",
     "s.yaml:6: variants[0].params.pollers: no workload has a parameter 'pollers'", None),
    # thresholds
    (W + "thresholds:\n  - edges_mx < 5\n",
     "s.yaml:5: thresholds[0]: unknown metric 'edges_mx' (did you mean 'edges_max'?)", None),
    (W + "thresholds:\n  - edges_max < lots\n",
     "s.yaml:5: thresholds[0]: cannot read threshold 'edges_max < lots'; expected '<metric> <op> <number>' "
     "or '<metric> <op> <factor>x baseline|previous [±<n>%]' [at 95%]", None),
    (W + "thresholds:\n  - latency_p95_s <= 1.2 baseline\n",
     "s.yaml:5: thresholds[0]: threshold 'latency_p95_s <= 1.2 baseline': write the factor as "
     "'1.2x baseline'", None),
    (W + "thresholds:\n  - {check: edges_max < 5, variants: [nope]}\n",
     "s.yaml:5: thresholds[0].variants: 'nope' matches no variant", "the variants: default"),
    (W + "thresholds:\n  - {check: edges_max < 5, variants: [defualt]}\n",
     "s.yaml:5: thresholds[0].variants: 'defualt' matches no variant (did you mean 'default'?)", None),
    (W + "thresholds:\n  - {chek: edges_max < 5}\n",
     "s.yaml:5: thresholds[0].chek: unknown key (did you mean 'check'?) (and 1 more)",
     "valid keys here: abort, check, tolerance, tolerance_abs, variants"),
    (W + "thresholds:\n  - {check: 'edges_max < 5 ±10%', tolerance: 0.2}\n",
     "s.yaml:5: thresholds[0]: threshold 'edges_max < 5 ±10%' gives a tolerance twice (in the text and "
     "as a key)", None),
    (W + "variants:\n  - name: a\n    thresholds: [{check: edges_max < 5, variants: [b]}]\n",
     "s.yaml:6: variants[0].thresholds: a variant's own thresholds apply to it; remove 'variants'", None),
    # external targets
    (W + "target:\n  kind: external\n  base_url: http://antenna.invalid\n",
     "s.yaml:6: target.base_url: refusing to send load to antenna.invalid: not a loopback address",
     UnsafeTargetError.hint),
    (W + "target:\n  kind: external\n  base_url: http://127.0.0.1:8000\nvariants:\n  - name: a\n"
     "    flags: {CACHALOT: off}\n",
     "s.yaml:8: variants[0]: flags need an embedded or a command target (contend cannot set the flags of "
     "an external server)", None),
    (W + "target:\n  kind: external\n  base_url: http://127.0.0.1:8000\n  token_env: tok-3f9a1c\n",
     "s.yaml:7: target.token_env: give the name of an environment variable (such as MY_TOKEN), never "
     "the secret itself", None),
    (W + "target:\n  kind: external\n",
     "s.yaml:4: target.base_url: missing required key", None),
]


@pytest.mark.parametrize(("text", "message", "hint"), MISTAKES, ids=[m[1][:60] for m in MISTAKES])
def test_each_mistake_has_its_message_and_line(text: str, message: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "s.yaml")
    assert caught.value.message == message
    if hint is not None:
        assert caught.value.hint == hint
    assert caught.value.hint  # every error says where to look or what to do


def test_the_secret_never_appears_in_the_error() -> None:
    text = W + "target:\n  kind: external\n  base_url: http://127.0.0.1:8000\n  token_env: tok-3f9a1c\n"
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "s.yaml")
    assert "tok-3f9a1c" not in caught.value.message + caught.value.hint


def test_yaml_12_booleans_keep_on_and_off_as_words() -> None:
    scenario = parse_scenario(W + "matrix:\n  CACHALOT: [on, off]\n  ATOMIC_REQUESTS: [true]\n")
    names = [v.name for v in scenario.expand()]
    assert names == ["CACHALOT=on,ATOMIC_REQUESTS=true", "CACHALOT=off,ATOMIC_REQUESTS=true"]


def test_load_scenario_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_scenario(DATA / "typo.yaml")
    assert caught.value.message == (f"{DATA / 'typo.yaml'}:5: workloads[0].concurrancy: unknown key "
                                     "(did you mean 'concurrency'?)")
    with pytest.raises(ConfigError, match="no such file"):
        load_scenario(tmp_path / "missing.yaml")


def test_describe_variants_lists_what_differs() -> None:
    lines = describe_variants(load_scenario(DATA / "log-persist.yaml"))
    assert lines == [
        "scenario log-persist: 2 variant(s) x 2 repetition(s) = 4 run(s)",
        "  logs-on  preset pr-1261  flags JOB_INITIAL_LOG_LINES=1000  2 threshold(s)",
        "  logs-off (baseline)  preset pr-1261  flags JOB_LOG_PERSIST_ENABLED=false,"
        "JOB_INITIAL_LOG_LINES=1000  2 threshold(s)",
    ]


def test_schema_validates_the_good_files() -> None:
    import jsonschema
    import yaml

    doc = schema()
    json.dumps(doc)
    for name in ("log-persist", "sweep", "external"):
        jsonschema.validate(yaml.safe_load((DATA / f"{name}.yaml").read_text()), doc)
    assert doc["$defs"]["BatchedPost"]["properties"]["batch"]["description"] == "Results per POST."


def test_the_reference_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "scenarios.md").read_text()
    assert page == schema_markdown(), "regenerate: contend schema --markdown > docs/scenarios.md"


def test_the_reference_example_is_a_valid_scenario() -> None:
    from contend.scenario import EXAMPLE

    assert isinstance(parse_scenario(EXAMPLE), Scenario)


def test_cli_validate_and_schema() -> None:
    ok = contend("validate", str(DATA / "log-persist.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"OK {DATA / 'log-persist.yaml'}",
                                      *describe_variants(load_scenario(DATA / "log-persist.yaml"))]
    bad = contend("validate", str(DATA / "typo.yaml"))
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == (f"Error: {DATA / 'typo.yaml'}:5: workloads[0].concurrancy: "
                                          "unknown key (did you mean 'concurrency'?)")
    assert bad.stderr.splitlines()[1].startswith("Hint: valid keys here: ")
    assert contend("validate", str(DATA / "missing.yaml")).returncode == 2
    printed = contend("schema")
    assert printed.returncode == 0 and json.loads(printed.stdout) == schema()
    assert contend("schema", "--markdown").stdout == schema_markdown()
