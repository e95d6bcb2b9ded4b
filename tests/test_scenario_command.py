"""The command target in a scenario file: each missing piece explained at its line, flags as environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from contend.errors import ConfigError
from contend.scenario import CommandTarget, describe_variants, load_scenario, parse_scenario
from tests.conftest import contend

GOOD = """\
name: mine
target:
  kind: command
  cwd: .
  up: [docker, compose, up, -d]
  ready: {url: "http://127.0.0.1:8000/api/v2/", timeout_s: 300, log: [docker, compose, logs, --tail, "30"]}
  fixtures: {run: "docker compose exec -T django python manage.py fixtures | tail -1", shell: true}
  down: {run: [docker, compose, down], timeout_s: 60}
  flags: {WEB_CONCURRENCY: 2}
  token_env: ANTENNA_TOKEN
workloads:
  - {kind: batched_post, batch: 5}
matrix:
  JOB_LOG_PERSIST_ENABLED: [true, false]
  NATS_TASK_TTR: [30, 300]
"""


def test_a_command_target_expands_its_flags_into_each_variants_environment() -> None:
    scenario = parse_scenario(GOOD)
    assert isinstance(scenario.target, CommandTarget)
    variants = scenario.expand()
    assert [v.flags for v in variants][:2] == [
        {"WEB_CONCURRENCY": "2", "JOB_LOG_PERSIST_ENABLED": "true", "NATS_TASK_TTR": "30"},
        {"WEB_CONCURRENCY": "2", "JOB_LOG_PERSIST_ENABLED": "true", "NATS_TASK_TTR": "300"},
    ]
    lines = describe_variants(scenario)
    assert lines[1] == "  target: commands up, ready, fixtures, down, in ."
    # Every flag is shown, even one equal to a reference-server default: this is not that server.
    assert "JOB_LOG_PERSIST_ENABLED=true" in lines[2]


def test_validate_explains_each_missing_piece_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntarget:\n  kind: command\n  dsn_env: null\nworkloads:\n"
                    "  - {kind: batched_post, batch: 5}\n  - {kind: pull_workers}\n")
    out = contend("validate", str(path))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"Error: {path}:2: target.up: missing: the command that starts your server")
    assert lines[1].startswith(f"{path}:2: target.ready: missing: how contend knows the server is up")
    assert lines[2].startswith(f"{path}:2: target.base_url: missing: where the load goes")
    assert lines[3].startswith(f"{path}:4: target.dsn_env: missing:")
    assert lines[4].startswith(f"{path}:6: workloads[0].job: missing: the job the POSTs go to")
    assert lines[5].startswith(f"{path}:7: workloads[1].pipeline_slug: missing: the pipeline")


@pytest.mark.parametrize(("change", "where", "what"), [
    ("  up: docker compose up -d\n", ":4: target.up", "a string needs shell: true"),
    ("  base_url: http://10.1.2.3:8000\n", ":4: target.base_url", "not a loopback address"),
    ("  ready: {url: 'http://example.org/'}\n", ":4: target.ready.url", "not a loopback address"),
    ("  ready: {timeout_s: 5}\n", ":4: target.ready", "either url"),
    ("  preset: pr-1261\n", ":4: target.preset", "unknown key"),
    ("  flags: {'bad name': 1}\n", ":4: target.flags.'bad name'", "cannot name an environment variable"),
    ("  token_env: 0123abcdef\n", ":4: target.token_env", "never the secret itself"),
])
def test_mistakes_of_a_command_target_point_at_their_line(change: str, where: str, what: str) -> None:
    keys = {"up": "  up: [run-it]\n", "ready": "  ready: {url: 'http://127.0.0.1:8000/'}\n",
            "base_url": "  base_url: http://127.0.0.1:8000\n"}
    key = change.split(":")[0].strip()
    keys.pop(key, None)
    text = ("name: mine\ntarget:\n  kind: command\n" + change + "".join(keys.values())
            + "workloads:\n  - {kind: batched_post, batch: 5, job: 1}\n")
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "mine.yaml")
    assert f"mine.yaml{where}" in caught.value.message and what in caught.value.message


def test_a_variant_preset_needs_an_embedded_target() -> None:
    text = GOOD.split("matrix:")[0] + "variants:\n  - {name: a, preset: pr-1261}\n"
    with pytest.raises(ConfigError, match=r":14: variants\[0\].preset: presets need an embedded target"):
        parse_scenario(text, "mine.yaml")


def test_the_shipped_black_box_scenario_validates() -> None:
    scenario = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "byo-refserver.yaml")
    assert isinstance(scenario.target, CommandTarget)
    assert [v.flags["JOB_LOG_PERSIST_ENABLED"] for v in scenario.expand()] == ["true", "false"]
    workflow = (Path(__file__).resolve().parent.parent / ".github" / "workflows" / "contention-gate.yml")
    assert "contend run scenarios/byo-refserver.yaml" in workflow.read_text(), "CI runs it end to end"


def _yaml_blocks(page: str) -> list[str]:
    return [block.split("```", 1)[0] for block in page.split("```yaml\n")[1:]]


def test_the_antenna_compose_recipe_is_a_valid_scenario_and_passes_each_flag_on() -> None:
    """The recipe cannot run here (no Docker engine); its scenario must validate, and the override
    file must hand every flag the scenario varies to the services that read it."""
    import yaml

    page = (Path(__file__).resolve().parent.parent / "docs" / "external-target.md").read_text()
    blocks = _yaml_blocks(page)
    recipe = next(b for b in blocks if b.startswith("name: antenna-compose"))
    scenario = parse_scenario(recipe, "docs/external-target.md")
    varied = {k for v in scenario.expand() for k in v.flags}
    assert varied == {"JOB_LOG_PERSIST_ENABLED", "NATS_TASK_TTR", "WEB_CONCURRENCY",
                      "CELERY_WORKER_CONCURRENCY"}

    class Compose(yaml.SafeLoader):
        pass

    Compose.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))
    override = yaml.load(next(b for b in blocks if b.startswith("# docker-compose.contend.yml")), Compose)
    passed = {name for service in override["services"].values() for name in service.get("environment", {})}
    assert varied <= passed
    for service in ("django", "celeryworker"):
        env = override["services"][service]["environment"]
        assert env["JOB_LOG_PERSIST_ENABLED"] == "${JOB_LOG_PERSIST_ENABLED:-true}"
    assert all(p.startswith("127.0.0.1:") for s in override["services"].values() for p in s.get("ports", []))
    assert scenario.target.kind == "command"
    # The generic example of the command target validates too.
    assert parse_scenario(next(b for b in blocks if b.startswith("name: my-stack")))
