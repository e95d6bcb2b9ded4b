"""The flag table, presets and resolution (no server needed)."""

from __future__ import annotations

import pytest

from contend.errors import ConfigError
from contend.flags import FLAGS, PRESETS, flag_names, parse_overrides, resolve_flags
from tests.conftest import contend


def test_every_flag_resolves_to_its_default_without_preset():
    values = resolve_flags(None, {})
    assert values == {flag.name: flag.default for flag in FLAGS}
    for flag in FLAGS:
        assert flag.check(flag.default) == flag.default


def test_issue_flags_are_all_present():
    assert {"JOB_LOG_PERSIST_ENABLED", "JOB_LOG_STORE", "PROGRESS_LOCK", "NATS_TASK_TTR", "NATS_MAX_DELIVER",
            "JOBS_POLL_ORDER", "JOBS_POLL_DEFAULT_LIMIT", "ATOMIC_REQUESTS", "WEB_CONCURRENCY",
            "ML_WORKER_CONCURRENCY", "CACHALOT"} <= set(flag_names())


def test_presets_bundle_the_chronology():
    pre = resolve_flags("pre-1261", {})
    keys = ("PROGRESS_LOCK", "NATS_TASK_TTR", "JOBS_POLL_ORDER", "JOBS_POLL_DEFAULT_LIMIT", "JOB_LOG_STORE")
    assert [pre[k] for k in keys] == ["select_for_update", "30", "newest", "10", "json"]
    pr = resolve_flags("pr-1261", {})
    assert [pr[k] for k in keys] == ["none", "300", "random", "1", "json"]
    assert resolve_flags("pr-1261-logs-off", {})["JOB_LOG_PERSIST_ENABLED"] == "false"
    assert resolve_flags("joblog-1259", {})["JOB_LOG_STORE"] == "table"
    head = resolve_flags("head", {})
    assert [head[k] for k in keys] == ["guarded", "300", "random", "1", "table"]
    assert set(PRESETS) == {"pre-1261", "pr-1261", "pr-1261-logs-off", "joblog-1259", "head"}
    # Every preset models a long-running job; the flag's own default is a fresh one.
    assert {resolve_flags(name, {})["JOB_INITIAL_LOG_LINES"] for name in PRESETS} == {"1000"}
    assert resolve_flags(None, {})["JOB_INITIAL_LOG_LINES"] == "0"
    assert resolve_flags(None, {})["DB_STATEMENT_TIMEOUT_MS"] == "30000"
    assert resolve_flags(None, {"DB_STATEMENT_TIMEOUT_MS": "0"})["DB_STATEMENT_TIMEOUT_MS"] == "0"


def test_overrides_win_and_are_normalised():
    values = resolve_flags("pre-1261", {"progress_lock": "ATOMIC", "NATS_TASK_TTR": " 2 "})
    assert values["PROGRESS_LOCK"] == "atomic"
    assert values["NATS_TASK_TTR"] == "2"
    assert values["JOBS_POLL_ORDER"] == "newest"


@pytest.mark.parametrize(("preset", "overrides", "expected"), [
    ("nope", {}, "unknown preset 'nope' (allowed: pre-1261, pr-1261, pr-1261-logs-off, joblog-1259, head)"),
    (None, {"FOO": "1"}, "unknown flag 'FOO' (allowed: JOB_LOG_PERSIST_ENABLED,"),
    (None, {"PROGRESS_LOCK": "sometimes"},
     "flag PROGRESS_LOCK: 'sometimes' is not allowed (allowed: select_for_update|none|guarded|"
     "none_full_save|optimistic|atomic)"),
    (None, {"NATS_TASK_TTR": "0"}, "flag NATS_TASK_TTR: '0' is not allowed (allowed: integer >= 1)"),
    (None, {"WEB_CONCURRENCY": "two"}, "flag WEB_CONCURRENCY: 'two' is not allowed (allowed: integer >= 1)"),
])
def test_bad_input_is_one_line_naming_the_allowed_values(preset, overrides, expected):
    with pytest.raises(ConfigError) as raised:
        resolve_flags(preset, overrides)
    assert raised.value.message.startswith(expected)
    assert "\n" not in raised.value.message


def test_parse_overrides():
    assert parse_overrides(["progress_lock=atomic", "NATS_TASK_TTR=5"]) == {
        "PROGRESS_LOCK": "atomic", "NATS_TASK_TTR": "5"}
    with pytest.raises(ConfigError, match="is not NAME=VALUE"):
        parse_overrides(["PROGRESS_LOCK"])


def test_flags_command_lists_flags_and_presets():
    done = contend("flags")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for flag in FLAGS:
        assert f"{flag.name}  default {flag.default}  allowed {flag.allowed}" in out
        assert flag.meaning in out
    for name in PRESETS:
        assert f"\n{name}  " in out


def test_up_rejects_a_bad_flag_before_starting_anything(tmp_path):
    done = contend("up", "--reports", str(tmp_path), "--flag", "JOBS_POLL_ORDER=sideways")
    assert done.returncode == 2
    assert "allowed: newest|oldest|random" in done.stderr
    assert list(tmp_path.iterdir()) == []
