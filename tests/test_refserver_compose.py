"""docker-compose.repro.yml and the Dockerfile: what can be checked without a Docker engine
(tests/test_compose_stack.py starts the stack under docker compose or podman-compose)."""

from __future__ import annotations

import ast
import re
import shlex
import sys
import tomllib
from pathlib import Path

import yaml

from contend.flags import flag_names
from contend.refserver.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent
INFRA_ENV = {"CONTEND_REF_DSN", "CONTEND_REF_NATS", "CONTEND_REF_TOKEN", "CONTEND_REF_IMAGES_URL",
             "DJANGO_SETTINGS_MODULE", "CONTEND_REF_PUBLIC_URL", "CONTEND_REF_PUBLIC_DSN"}
ENTRY = ["python", "-m", "contend.refserver"]
SETUP_FILE = "/run/contend/setup.json"
SERVER_REQUIREMENTS = ROOT / "contend" / "refserver" / "requirements.txt"


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
    # published on the loopback only, each port overridable
    assert services["web"]["ports"] == ["127.0.0.1:${CONTEND_WEB_PORT:-8000}:8000"]
    assert services["postgres"]["ports"] == ["127.0.0.1:${CONTEND_PG_PORT:-15432}:5432"]
    assert services["images"]["ports"] == ["127.0.0.1:8001:8001"]
    # The tasks name the images where the host reaches them.
    images_url = expand([services["setup"]["environment"]["CONTEND_REF_IMAGES_URL"]])[0]
    assert images_url == "http://127.0.0.1:8001/images/"
    for name in ("web", "worker"):
        assert "SYS_PTRACE" in services[name]["cap_add"]


def test_one_image_built_once_and_start_up_kept_by_the_processes():
    services = compose()["services"]
    assert [name for name, service in services.items() if "build" in service] == ["setup"]
    images = {services[name]["image"] for name in ("setup", "web", "worker")}
    assert len(images) == 1
    # setup writes the file web and workers wait for, on a volume they share
    setup = expand(services["setup"]["command"])
    assert setup[3] == "setup" and setup[setup.index("--out") + 1] == SETUP_FILE
    for name in ("web", "worker"):
        argv = expand(services[name]["command"])
        assert argv[argv.index("--after") + 1] == SETUP_FILE
        assert services[name]["volumes"] == services["setup"]["volumes"]
        assert services[name]["depends_on"] == {"setup": {"condition": "service_completed_successfully"}}
    # no health check: podman without systemd cannot schedule one (and setup waits for Postgres itself)
    assert "healthcheck" not in services["postgres"]


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
            args = parser.parse_args(argv[3:])
            seen.add(args.command)
    assert seen == {"setup", "web", "worker", "images"}


def test_dockerfile_installs_the_server_requirements_then_the_package_and_runs_an_entry_point():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install -r requirements.txt$", text, re.M)
    assert re.search(r"^RUN pip install --no-deps \. ", text, re.M)
    assert text.count("py-spy") == 0  # named once, in the requirements
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd
    argv = yaml.safe_load(cmd.group(1))
    assert argv[:3] == ENTRY
    assert build_parser().parse_args(argv[3:]).command == "web"


def requirement_lines() -> list[str]:
    lines = SERVER_REQUIREMENTS.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def test_the_server_requirements_are_pyproject_dependencies_and_cover_its_imports():
    dependencies = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert set(requirement_lines()) <= dependencies
    assert sum("py-spy" in line for line in requirement_lines()) == 1
    provided = {"django", "psycopg", "nats", "pydantic", "PIL", "contend"}  # PIL: pillow, the images
    modules = [*(ROOT / "contend" / "refserver").rglob("*.py"), ROOT / "contend" / "flags.py",
               ROOT / "contend" / "errors.py"]
    imported = set()
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= provided, third_party - provided
    contend_modules = {node.module for path in modules for node in ast.walk(ast.parse(path.read_text()))
                       if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("contend.")}
    assert {m for m in contend_modules if not m.startswith("contend.refserver")} <= {"contend.flags",
                                                                                      "contend.errors"}


def test_the_image_context_is_the_package_only():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"
    assert {"!pyproject.toml", "!README.md", "!contend/"} <= set(ignore)
