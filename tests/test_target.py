"""The loopback guard refuses before any DNS lookup or connection."""

from __future__ import annotations

import socket

import pytest

from contend.errors import ConfigError, UnsafeTargetError
from contend.target import check_target


@pytest.fixture
def no_network(monkeypatch):
    """Make every name lookup and connection fail the test: the guard must need neither."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network used by the guard: {args!r}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.8.9.10/",
        "https://localhost:443/api",
        "http://LOCALHOST",
        "http://[::1]:8000",
        "http://localhost.:80",
    ],
)
def test_loopback_targets_pass(no_network, url):
    check_target(url, allow_remote=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://antenna.invalid:8000",
        "http://10.0.0.1",
        "http://[2001:db8::1]/",
        "http://localhost.invalid",
        "http://127.0.0.1.invalid",
        "http://0.0.0.0:8000",
    ],
)
def test_remote_targets_refused_without_lookup(no_network, url):
    with pytest.raises(UnsafeTargetError) as refused:
        check_target(url, allow_remote=False)
    assert "\n" not in refused.value.message
    assert "--allow-remote" in refused.value.hint


def test_allow_remote_passes_without_lookup(no_network):
    check_target("https://antenna.invalid/api", allow_remote=True)


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1", "127.0.0.1:8000", "http://", "http://127.0.0.1:99999", "http://user:pw@127.0.0.1"],
)
def test_malformed_targets_are_config_errors(no_network, url):
    with pytest.raises(ConfigError) as bad:
        check_target(url, allow_remote=True)
    assert not isinstance(bad.value, UnsafeTargetError)
