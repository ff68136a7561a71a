"""The deployment files, checked without a Docker engine (none runs where these tests run).

docker-compose.yml may only run ``userpath`` commands that the CLI has now and set ``USERPATH_*``
variables that the settings have now; config/.env.example lists exactly the settings, with their
defaults. Both are read from the code when the tests run, so a renamed command or setting fails
here instead of in a deployment.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import redis
import yaml

from config.settings import ENV_PREFIX, Settings
from userpath_worker.accounts.secret import SECRET_FILE
from userpath_worker.brokers import producer_users
from userpath_worker.cli import cli
from userpath_worker.webhooks.crypto import SECRET_KEY_FILE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "config" / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

COMPOSE_TEXT = COMPOSE_FILE.read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _values(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in _values(value)]
    if isinstance(node, list):
        return [text for value in node for text in _values(value)]
    return [] if node is None else [str(node)]


# Every value Compose interpolates (comments and keys are not).
COMPOSE_VALUES = "\n".join(_values(COMPOSE))
# Services built from our Dockerfile; the others run third-party images (postgres, flower...).
OURS = sorted(name for name, service in SERVICES.items() if "build" in service)

SETTING_VARIABLES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


# --- Compose's variable interpolation, enough of it to read the file as Compose would --------


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR:+other}`` (nested in defaults too) and ``$$``. A required variable that is unset
    becomes ``<VAR>``: these tests look at shapes, not secrets."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], environment))
            i = end + 1
            continue
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i + 1)
        if not match:
            out.append("$")
            i += 1
            continue
        out.append(environment.get(match.group(), ""))
        i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    raise AssertionError(f"unclosed ${{ in {text!r}")


def _expand(expression: str, environment: dict[str, str]) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", expression, re.DOTALL)
    assert match, f"not a Compose variable: ${{{expression}}}"
    name, colon, operator, word = match.groups()
    value = environment.get(name)
    is_set = value is not None and (value != "" or not colon)
    if operator == "-":
        return value if is_set else interpolate(word, environment)
    if operator == "?":
        return value if is_set else f"<{name}>"
    if operator == "+":
        return interpolate(word, environment) if is_set else ""
    return value or ""


def variables_in(text: str) -> set[str]:
    """Every variable name interpolated anywhere in ``text`` (``$$`` is a literal dollar)."""
    unescaped = text.replace("$$", "")
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", unescaped))


def required_variables_in(text: str) -> set[str]:
    """Variables used without a default (``${VAR}``, ``$VAR``, ``${VAR:?...}``)."""
    unescaped = text.replace("$$", "")
    with_default = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-+]", unescaped))
    return variables_in(text) - with_default


# --- Reading services ---------------------------------------------------------------------


def argv(value: str | list[str] | None) -> list[str]:
    """A command or healthcheck as the container runs it, after interpolation with defaults."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value, {}))
    return [interpolate(str(part), {}) for part in value]


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = argv(service["healthcheck"]["test"])
    if test and test[0] == "CMD":
        return test[1:]
    if test and test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]))
    return test


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (entry.partition("=") for entry in environment)
        return {name: value if separator else None for name, separator, value in pairs}
    return {name: None if value is None else str(value) for name, value in environment.items()}


def resolve(arguments: list[str]) -> click.Command:
    """The ``userpath`` command that ``arguments`` runs, with its options parsed and validated by
    click exactly as the CLI would (unknown commands, options and bad values fail)."""
    assert arguments and arguments[0] == "userpath", f"not a userpath command: {arguments}"
    command: click.Command = cli
    # With each command's context settings, as make_context applies them: a context without them
    # would have click cache a help option of --help alone on every command it reaches (no -h).
    context = click.Context(cli, info_name="userpath", **cli.context_settings)
    rest = arguments[1:]
    while isinstance(command, click.Group):
        assert rest and not rest[0].startswith("-"), f"{shlex.join(arguments)}: a subcommand is missing"
        name, *rest = rest
        found = command.get_command(context, name)
        assert found is not None, f"{shlex.join(arguments)}: `{context.command_path} {name}` is not a command"
        command = found
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=name, parent=context, **command.context_settings)
    try:
        command.make_context(command.name, list(rest), parent=context)
    except click.UsageError as error:  # also click.BadParameter
        pytest.fail(f"{shlex.join(arguments)}: {error.format_message()}")
    return command


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    dependencies = service.get("depends_on") or {}
    if isinstance(dependencies, list):
        return {name: {"condition": "service_started"} for name in dependencies}
    return dependencies


def one_shot_services() -> set[str]:
    """Services that others wait on to finish: they exit, so a healthcheck means nothing."""
    return {
        name
        for service in SERVICES.values()
        for name, dependency in depends_on(service).items()
        if dependency.get("condition") == "service_completed_successfully"
    }


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_file_has_the_deployment_services() -> None:
    assert {"postgres", "redis", "migrate", "worker", "beat", "rabbitmq", "flower"} <= set(SERVICES)
    assert {"migrate", "worker", "beat"} <= set(OURS)


@pytest.mark.parametrize("name", OURS)
def test_our_services_run_real_userpath_commands(name: str) -> None:
    service = SERVICES[name]
    assert "command" in service, f"{name}: set the command explicitly, not the image's default"
    resolve(argv(service["command"]))
    if "healthcheck" in service:
        probe = healthcheck_argv(service)
        if probe and probe[0] == "userpath":
            resolve(probe)


def test_every_userpath_variable_is_a_setting() -> None:
    used = variables_in(COMPOSE_VALUES) | {name for s in SERVICES.values() for name in environment_of(s)}
    unknown = sorted(name for name in used if name.startswith(ENV_PREFIX) and name not in SETTING_VARIABLES)
    assert not unknown, f"docker-compose.yml uses variables that are not settings: {unknown}"


@pytest.mark.parametrize("name", OURS)
def test_the_values_compose_sets_are_valid_settings(name: str) -> None:
    values = {
        variable.removeprefix(ENV_PREFIX).lower(): interpolate(value, {})
        for variable, value in environment_of(SERVICES[name]).items()
        if variable.startswith(ENV_PREFIX) and value is not None
    }
    Settings(**values)  # raises on a value the worker would refuse at start


def test_every_service_has_a_healthcheck_except_the_one_shot_migration() -> None:
    assert one_shot_services() == {"migrate"}
    assert argv(SERVICES["migrate"]["command"]) == ["userpath", "db", "upgrade"]
    assert SERVICES["migrate"].get("restart", "no") == "no"
    for name, service in SERVICES.items():
        if name in one_shot_services():
            continue
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_worker_and_beat_start_after_the_migration_and_healthy_services(name: str) -> None:
    dependencies = depends_on(SERVICES[name])
    assert dependencies["migrate"]["condition"] == "service_completed_successfully"
    for needed in ("postgres", "redis"):
        assert dependencies[needed]["condition"] == "service_healthy"


def test_exactly_one_beat() -> None:
    beat_command = cli.commands["beat"]
    beats = [name for name in OURS if resolve(argv(SERVICES[name]["command"])) is beat_command]
    assert beats == ["beat"]
    assert SERVICES["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert SERVICES["beat"].get("profiles") is None  # always there, never twice
    # A worker with an embedded beat would be one more beat per replica.
    for name in OURS:
        assert "--beat" not in argv(SERVICES[name]["command"]), f"{name} embeds a beat"


def test_beat_keeps_its_schedule_on_a_volume() -> None:
    command = argv(SERVICES["beat"]["command"])
    schedule = Path(command[command.index("--schedule") + 1])
    mounted = {str(volume).split(":")[1] for volume in SERVICES["beat"].get("volumes", [])}
    assert str(schedule.parent) in mounted


def test_the_worker_scales() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker  # --scale worker=N needs generated names
    # N replicas cannot all bind one host port.
    assert not worker.get("ports"), "publish nothing from the worker; scrape metrics on the compose network"


def test_the_worker_is_probed_with_userpath_health_and_exposes_its_metrics() -> None:
    worker = SERVICES["worker"]
    assert healthcheck_argv(worker)[:2] == ["userpath", "health"]
    exposed = {interpolate(str(port), {}) for port in worker.get("expose", [])}
    assert str(Settings.model_fields["metrics_port"].default) in exposed


def test_redis_persists_the_queued_events() -> None:
    redis = SERVICES["redis"]
    command = argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", []))


def test_the_web_pages_run_behind_the_proxy_and_believe_only_its_forwarded_addresses() -> None:
    """Without --trusted-proxy every client of the proxy had the proxy's address, and anyone's
    failed sign-ins throttled everyone (issue 20, reproduction 4)."""
    web, proxy = SERVICES["web"], SERVICES["proxy"]
    command = argv(web["command"])
    trusted = command[command.index("--trusted-proxy") + 1]
    assert trusted == interpolate(proxy["networks"]["web-proxy"]["ipv4_address"], {})
    subnet = interpolate(COMPOSE["networks"]["web-proxy"]["ipam"]["config"][0]["subnet"], {})
    assert ipaddress.ip_address(trusted) in ipaddress.ip_network(subnet)
    assert set(web["networks"]) == {"default", "web-proxy"} and set(proxy["networks"]) == {"web-proxy"}
    caddyfile = COMPOSE["configs"]["caddyfile"]["content"]
    assert "reverse_proxy web:8000" in caddyfile and "read_header 10s" in caddyfile
    assert interpolate(environment_of(web)["USERPATH_WEB_BASE_URL"] or "", {}) == "https://localhost"


def test_rabbitmq_and_flower_are_optional() -> None:
    assert SERVICES["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert SERVICES["flower"]["profiles"] == ["flower"]
    for name in ("postgres", "redis", "migrate", "worker", "beat"):
        assert not SERVICES[name].get("profiles"), f"{name} must run without a profile"
    # Without the profile, the worker must not need RabbitMQ.
    assert depends_on(SERVICES["worker"])["rabbitmq"].get("required") is False


def test_flower_runs_the_official_image_with_authentication() -> None:
    flower = SERVICES["flower"]
    assert "build" not in flower and flower["image"].startswith("mher/flower:")
    environment = environment_of(flower)
    assert str(environment["FLOWER_UNAUTHENTICATED_API"]).lower() == "false"
    assert variables_in(str(environment["FLOWER_BASIC_AUTH"])) == {"FLOWER_BASIC_AUTH"}
    # Same broker as the workers.
    assert environment["CELERY_BROKER_URL"] == environment_of(SERVICES["worker"])["USERPATH_BROKER_URL"]


# --- config/.env.example ------------------------------------------------------------------


def env_example() -> list[tuple[str, str]]:
    """(variable, value) of every line, commented out or not, that assigns a variable."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            value = match.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found.append((match.group(1), value))
    return found


def test_env_example_lists_exactly_the_settings_with_their_defaults() -> None:
    listed = [(name, value) for name, value in env_example() if name.startswith(ENV_PREFIX)]
    names = [name for name, _ in listed]
    assert len(names) == len(set(names)), "a setting is listed twice"
    not_settings, missing = sorted(set(names) - SETTING_VARIABLES), sorted(SETTING_VARIABLES - set(names))
    assert not not_settings, f"config/.env.example lists variables that are not settings: {not_settings}"
    assert not missing, f"config/.env.example does not list these settings: {missing}"
    for name, value in listed:
        default = Settings.model_fields[name.removeprefix(ENV_PREFIX).lower()].default
        if default is None:
            assert value == "", f"{name}: the default is unset, listed as {value!r}"
        else:
            assert type(default)(value) == default, f"{name}: the default is {default!r}, listed as {value!r}"


def test_env_example_compose_variables_match_the_compose_file() -> None:
    others = {name for name, _ in env_example() if not name.startswith(ENV_PREFIX)}
    # Compose's own variables (COMPOSE_PROFILES...) are read by Compose itself.
    stale = sorted(name for name in others - variables_in(COMPOSE_VALUES) if not name.startswith("COMPOSE_"))
    assert not stale, f"config/.env.example lists variables docker-compose.yml does not use: {stale}"
    unlisted = sorted(required_variables_in(COMPOSE_VALUES) - others - SETTING_VARIABLES)
    assert not unlisted, f"docker-compose.yml needs variables config/.env.example does not list: {unlisted}"


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_installs_dependencies_first_and_runs_as_non_root() -> None:
    instructions = [
        line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith(("#", " "))
    ]
    assert re.fullmatch(r"FROM python:3\.1[1-9]-slim", instructions[0])
    copies = [line for line in instructions if line.startswith("COPY ")]
    assert copies[0] == "COPY pyproject.toml ./"
    # Every top-level package that pyproject.toml ships is copied into the image.
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*") for pattern in shipped}:
        assert f"COPY {package} ./{package}" in copies
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_what_the_embedded_default_writes_beside_its_database_is_ignored_by_git() -> None:
    # The generated secrets above all: committed, they would sign every session and decrypt every
    # webhook signing secret of whoever clones the repository.
    written = [
        "userpath.db",
        "userpath-broker.db",
        "userpath-demo-worker.log",
        "userpath-demo-edge.log",
        SECRET_FILE,
        SECRET_KEY_FILE,
    ]
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *written], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert checked.stdout.split() == written


# --- The brokers' users -------------------------------------------------------------------

REDIS_START = ROOT / "config" / "brokers" / "redis-start.sh"
RABBITMQ_START = ROOT / "config" / "brokers" / "rabbitmq-start.sh"


def test_compose_gives_each_broker_a_worker_user_and_a_producer_user_with_the_clis_rules() -> None:
    """The start scripts' producer users are ``userpath broker producer-user``'s, word for word."""
    assert f' {" ".join(producer_users.REDIS_RULES)}"' in REDIS_START.read_text()
    configure, write, read = producer_users.RABBITMQ_PERMISSIONS
    assert f"set_permissions -p / producer '{configure}' '{write}' '{read}'" in RABBITMQ_START.read_text()
    for name, script in (("redis", "userpath-redis-start"), ("rabbitmq", "userpath-rabbitmq-start")):
        assert argv(SERVICES[name]["command"])[:2] == ["sh", f"/usr/local/bin/{script}"]
    assert SERVICES["rabbitmq"]["hostname"] == "rabbitmq"  # its data is kept under its node's name
    worker_url = interpolate(SERVICES["worker"]["environment"]["USERPATH_BROKER_URL"], {"REDIS_WORKER_PASSWORD": "w"})
    assert worker_url == "redis://userpath:w@redis:6379/0"


def test_the_compose_redis_starts_with_the_worker_and_producer_users_and_no_default_user(tmp_path: Path) -> None:
    """config/brokers/redis-start.sh run as the redis service runs it (on a socket of its own here)."""
    socket = tmp_path / "redis.sock"
    environment = {"PATH": "/usr/bin:/bin", "REDIS_ACL_FILE": str(tmp_path / "users.acl")}
    environment |= {"REDIS_WORKER_PASSWORD": "worker-pw", "REDIS_PRODUCER_PASSWORD": "producer-pw"}
    server = subprocess.Popen(
        ["sh", str(REDIS_START), "--port", "0", "--unixsocket", str(socket), "--save", "", "--appendonly", "no"],
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        worker = redis.Redis(unix_socket_path=str(socket), username="userpath", password="worker-pw")
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.05)
        assert worker.lpush("userpath.events", b"m") == 1 and worker.lrange("userpath.events", 0, -1) == [b"m"]
        producer = redis.Redis(unix_socket_path=str(socket), username="producer", password="producer-pw")
        assert producer.lpush("userpath.jobs", b"j") == 1
        assert " ".join(producer_users.REDIS_RULES) in REDIS_START.read_text()  # `broker producer-user`'s
        for refused in (lambda: producer.lrange("userpath.events", 0, -1), lambda: producer.publish("c", b"x")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(unix_socket_path=str(socket)).ping()  # the default user is off
        assert "producer-pw" not in (tmp_path / "users.acl").read_text()  # only its SHA-256
        assert oct((tmp_path / "users.acl").stat().st_mode & 0o777) == "0o600"
    finally:
        server.terminate()
        server.wait(10)
