"""Checks on Dockerfile, .dockerignore, docker-compose.yml and requirements.lock.

Docker is not available where tests run, so these read the files and assert what a build
and `docker compose up` rely on: commands the CLI accepts, settings that exist, ports and
hostnames that line up, health checks behind every `service_healthy`, a non-root image.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.cli.main import build_parser
from app.settings import Settings
from tests.support import REPO_ROOT

ROOT = REPO_ROOT
COMPOSE_SERVICES = {"redis", "kafka", "api", "consumer", "webhooks", "simulator", "prometheus", "grafana"}
APP_SERVICES = {"api", "consumer", "webhooks", "simulator"}
# `${NAME:-default}` in a compose value: what compose substitutes when NAME is not set in the shell.
_INTERPOLATION = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


# --- reading the files -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM stage it belongs to

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails the test on shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        parsed = json.loads(text.strip())
        assert isinstance(parsed, list), f"{self.keyword} should use the exec (JSON array) form"
        return [str(part) for part in parsed]


def dockerfile_instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(instruction.stage for instruction in instructions)
    return [instruction for instruction in instructions if instruction.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in instructions if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """The service's variables as compose sets them with none of the interpolated ones set in the shell."""
    environment = service.get("environment", {})
    if isinstance(environment, list):  # the KEY=value list form
        environment = dict(entry.split("=", 1) for entry in environment)
    return {key: _INTERPOLATION.sub(r"\1", str(value)) for key, value in environment.items()}


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container-side ports of `ports:` entries ("8000:8000", "127.0.0.1:8000:8000/tcp", 8000)."""
    return {int(str(entry).split(":")[-1].split("/")[0]) for entry in service.get("ports", [])}


def has_healthcheck(name: str) -> bool:
    """True if the service's container runs a health check: its own, or the image's HEALTHCHECK."""
    service = services()[name]
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and bool(check.get("test"))
    built_here = service.get("build") in (".", "./")
    return built_here and any(instruction.keyword == "HEALTHCHECK" for instruction in dockerfile_instructions())


def http_port(command: list[str]) -> int:
    """The port of the http://127.0.0.1:PORT URL inside a health-check command."""
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)/", " ".join(command))
    assert match, f"no loopback URL in health check {command}"
    return int(match.group(1))


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"requirements.lock line is not an exact pin: {line!r}"
            name, version = line.split("==", 1)
            pins[normalized(name)] = version.split(";")[0].strip()
    return pins


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower().strip()


# --- the CLI reference ---------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    }


def assert_cli_accepts(command: list[str], where: str) -> None:
    """`command` is `leadscore SUBCOMMAND ...` that the real command line parses."""
    assert command[0] == "leadscore", f"{where}: {command} does not run leadscore"
    parser = build_parser()
    known = subcommands(parser)
    assert command[1] in known, f"{where}: {command[1]!r} is not a leadscore subcommand ({sorted(known)})"
    try:
        parser.parse_args(command[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: leadscore rejects {command[1:]} (exit {exc.code})")


def app_services() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in sorted(APP_SERVICES):
        yield name, services()[name]


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_defines_the_stack() -> None:
    assert set(services()) == COMPOSE_SERVICES


def test_only_the_simulator_and_webhooks_are_opt_in() -> None:
    profiled = {name for name, service in services().items() if service.get("profiles")}
    assert profiled == {"simulator", "webhooks"}
    assert services()["simulator"]["profiles"] == ["demo"]
    # webhooks needs the user's subscriptions, from the shell
    assert services()["webhooks"]["profiles"] == ["webhooks"]
    assert environment_of(services()["webhooks"])["LEADSCORE_WEBHOOKS"] == "[]"


def test_app_services_run_our_image() -> None:
    for name, service in app_services():
        assert service.get("build") in (".", "./"), f"{name} should build from this repository"
        assert service.get("image") == services()["api"].get("image"), f"{name} should share the api image"


def test_app_service_commands_are_leadscore_subcommands() -> None:
    expected = {"api": "serve", "consumer": "consume", "webhooks": "webhooks", "simulator": "simulate"}
    for name, service in app_services():
        command = command_of(service)
        assert_cli_accepts(command, f"compose service {name}")
        assert command[1] == expected[name]


def test_app_environment_is_leadscore_settings() -> None:
    for name, service in app_services():
        environment = environment_of(service)
        assert environment, f"{name} sets no LEADSCORE_ variables"
        stray = [key for key in environment if not key.startswith("LEADSCORE_")]
        assert not stray, f"{name} sets variables the service does not read: {stray}"


def test_app_environment_names_settings_fields_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_class = Settings
    prefix = settings_class.model_config.get("env_prefix", "")
    nested = settings_class.model_config.get("env_nested_delimiter") or None
    fields = set(settings_class.model_fields)
    for name, service in app_services():
        environment = environment_of(service)
        for key in environment:
            field = key.removeprefix(prefix).lower()
            field = field.split(nested, 1)[0] if nested else field
            assert field in fields, f"{name}: {key} is not a Settings field (known: {sorted(fields)})"
        # The values must pass the same validation the service runs at start-up.
        for key in [key for key in os.environ if key.startswith("LEADSCORE_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings_class()


def test_service_healthy_dependencies_have_health_checks() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):  # the short form means service_started
            depends_on = {target: {"condition": "service_started"} for target in depends_on}
        for target, spec in depends_on.items():
            assert target in services(), f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert has_healthcheck(target), f"{name} waits for {target} to be healthy; it has no health check"


def test_api_and_consumer_health_checks_ask_readiness_on_their_own_port() -> None:
    for name, port_option in (("api", "--port"), ("consumer", "--metrics-port")):
        service = services()[name]
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and check[1] == "python", f"{name}: no curl in the slim image"
        probe = " ".join(check)
        assert "/readyz" in probe, f"{name} should be healthy only when ready"
        assert http_port(check[1:]) == int(option(command_of(service), port_option)), name


def test_api_and_consumer_wait_for_healthy_redis_and_kafka() -> None:
    for name in ("api", "consumer"):
        depends_on = services()[name]["depends_on"]
        for target in ("redis", "kafka"):
            assert depends_on[target]["condition"] == "service_healthy", f"{name} -> {target}"


def test_app_addresses_point_at_compose_services() -> None:
    kafka_environment = environment_of(services()["kafka"])
    advertised = {entry.split("://", 1)[1] for entry in kafka_environment["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name, service in app_services():
        environment = environment_of(service)
        redis_url = urlsplit(environment["LEADSCORE_REDIS_URL"])
        assert redis_url.hostname in services(), f"{name}: Redis host {redis_url.hostname} is no service"
        assert redis_url.port in (6379, None)
        # The client is redirected to advertised listeners, so bootstrap must be one of them.
        for server in environment["LEADSCORE_KAFKA_BOOTSTRAP_SERVERS"].split(","):
            assert server in advertised, f"{name}: {server} is not an advertised Kafka listener {advertised}"


def test_kafka_runs_single_node_kraft() -> None:
    environment = environment_of(services()["kafka"])
    assert services()["kafka"]["image"] == "apache/kafka:3.8.0"
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = environment["KAFKA_NODE_ID"]
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@kafka:")
    listener_names = {entry.split("://")[0] for entry in environment["KAFKA_LISTENERS"].split(",")}
    protocol_map = {entry.split(":")[0] for entry in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert listener_names <= protocol_map
    assert environment["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert environment["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # one broker, one replica


def test_ports_line_up() -> None:
    expose = {int(port) for port in only(final_stage(dockerfile_instructions()), "EXPOSE").arguments.split()}
    api = services()["api"]
    assert container_ports(api) == expose
    assert int(option(command_of(api), "--port")) in expose
    assert option(command_of(api), "--host") == "0.0.0.0"  # reachable through the port mapping

    consumer = services()["consumer"]
    metrics_port = int(option(command_of(consumer), "--metrics-port"))
    # Exposed to the stack's network (Prometheus), not published: `--scale consumer=N` replicas would clash.
    assert {int(port) for port in consumer["expose"]} == {metrics_port} and "ports" not in consumer
    # Reachable from other containers only if the process listens beyond the container's loopback.
    assert option(command_of(consumer), "--metrics-host") == "0.0.0.0"
    assert http_port(consumer["healthcheck"]["test"]) == metrics_port

    webhooks = services()["webhooks"]
    metrics_port = int(option(command_of(webhooks), "--metrics-port"))
    assert {int(port) for port in webhooks["expose"]} == {metrics_port} and "ports" not in webhooks
    assert option(command_of(webhooks), "--metrics-host") == "0.0.0.0"
    assert http_port(webhooks["healthcheck"]["test"]) == metrics_port


# --- Dockerfile and .dockerignore -----------------------------------------------------------------


def test_image_builds_from_python_311_slim() -> None:
    bases = [i.arguments.split()[0] for i in dockerfile_instructions() if i.keyword == "FROM"]
    assert bases[-1] == "python:3.11-slim"
    assert all(base == "python:3.11-slim" for base in bases)


def test_image_installs_with_the_lock_file() -> None:
    installs = [i for i in dockerfile_instructions() if i.keyword == "RUN" and "pip install" in i.arguments]
    assert installs, "no pip install in the Dockerfile"
    for install in installs:
        assert "-c requirements.lock" in install.arguments, install.arguments
    copied = [i.arguments for i in dockerfile_instructions() if i.keyword == "COPY"]
    assert any("requirements.lock" in arguments.split() for arguments in copied)


def test_image_runs_as_non_root() -> None:
    user = only(final_stage(dockerfile_instructions()), "USER").arguments.split(":")[0]
    assert user not in {"root", "0"}


def test_image_default_command_serves_the_api_on_the_exposed_port() -> None:
    stage = final_stage(dockerfile_instructions())
    command = only(stage, "CMD").exec_form()
    assert_cli_accepts(command, "Dockerfile CMD")
    assert command[1] == "serve"
    expose = {int(port) for port in only(stage, "EXPOSE").arguments.split()}
    assert int(option(command, "--port")) in expose
    assert command == command_of(services()["api"]), "compose api should run what the image runs"


def test_image_healthcheck_probes_healthz_without_curl() -> None:
    stage = final_stage(dockerfile_instructions())
    check = only(stage, "HEALTHCHECK").exec_form()
    expose = {int(port) for port in only(stage, "EXPOSE").arguments.split()}
    assert check[0] == "python"  # no curl or wget in the slim image
    assert "/healthz" in " ".join(check)
    assert http_port(check) in expose


def test_copied_sources_exist_and_are_not_docker_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction in dockerfile_instructions():
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            top = source.rstrip("/").split("/")[0]
            hits = [pattern for pattern in ignored if fnmatch.fnmatch(top, pattern)]
            assert not hits, f"COPY {source} but .dockerignore excludes it ({hits})"


def test_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".pytest_cache", ".mypy_cache", "bench/results"} <= ignored


# --- requirements.lock ----------------------------------------------------------------------------


def test_lock_pins_every_declared_dependency_at_its_declared_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += [requirement for requirement in extra if not requirement.startswith(project["name"])]
    pins = lock_pins()
    for requirement in declared:
        name, _, version = requirement.partition("==")
        assert normalized(name) in pins, f"{name} is missing from requirements.lock"
        if version:
            assert pins[normalized(name)] == version.strip(), f"{name}: lock differs from pyproject.toml"
    assert normalized(project["name"]) not in pins, "the project itself must not be in the lock"
