"""docker-compose.repro.yml and the Dockerfile: what can be checked without a Docker engine."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from contend.flags import flag_names
from contend.refserver.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent
INFRA_ENV = {"CONTEND_REF_DSN", "CONTEND_REF_NATS", "CONTEND_REF_TOKEN", "CONTEND_REF_IMAGES_URL",
             "DJANGO_SETTINGS_MODULE"}
ENTRY = ["python", "-m", "contend.refserver"]
MANAGEMENT_COMMANDS = {"migrate", "contend_fixtures"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.repro.yml").read_text())


def entry_point_commands(command: list[str] | str) -> list[list[str]]:
    """Return every ``python -m contend.refserver ...`` invocation of a service command."""
    if isinstance(command, list) and command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command if isinstance(command, list) else shlex.split(command)]


def expand(argv: list[str]) -> list[str]:
    """Replace ``${NAME:-default}`` by its default, as compose does when NAME is unset."""
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in argv]


def test_compose_parses_and_has_every_part():
    services = compose()["services"]
    assert {"postgres", "nats", "setup", "web", "worker", "images"} <= set(services)
    assert "-js" in services["nats"]["command"]
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["images"]["ports"] == ["127.0.0.1:8001:8001"]
    # The tasks name the images where the host reaches them.
    images_url = expand([services["setup"]["environment"]["CONTEND_REF_IMAGES_URL"]])[0]
    assert images_url == "http://127.0.0.1:8001/images/"
    for name in ("web", "worker"):
        assert "SYS_PTRACE" in services[name]["cap_add"]


def test_every_environment_name_is_a_known_flag_and_every_flag_is_passed():
    known = set(flag_names()) | INFRA_ENV
    for name, service in compose()["services"].items():
        if name in ("postgres", "nats", "images"):  # the image server reads no configuration
            continue
        env = set(service["environment"])
        assert env <= known, (name, env - known)
        assert set(flag_names()) <= env, (name, set(flag_names()) - env)


def test_every_command_is_a_real_entry_point():
    parser = build_parser()
    seen = set()
    for name in ("setup", "web", "worker", "images"):
        for argv in entry_point_commands(compose()["services"][name]["command"]):
            argv = expand(argv)
            assert argv[:3] == ENTRY, argv
            if argv[3] == "manage":
                assert argv[4] in MANAGEMENT_COMMANDS
                seen.add(argv[4])
                continue
            args = parser.parse_args(argv[3:])
            seen.add(args.command)
    assert seen == {"migrate", "contend_fixtures", "web", "worker", "images"}
    management = ROOT / "contend" / "refserver" / "management" / "commands" / "contend_fixtures.py"
    assert management.exists()


def test_dockerfile_installs_the_package_and_runs_an_entry_point():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \. py-spy$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd
    argv = yaml.safe_load(cmd.group(1))
    assert argv[:3] == ENTRY
    assert build_parser().parse_args(argv[3:]).command == "web"
