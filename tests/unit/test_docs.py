"""The documentation and compose.yaml agree with the code.

These read the real files at the top of the repository (``docs/events.md``,
``docs/configuration.md``, ``compose.yaml``) and compare them with the event catalogue, the
settings and the CLI, so that a renamed tag, a new setting or a misspelt variable fails here.
PyYAML is not a dependency: compose.yaml is read with a small indentation-based parser that
understands the subset the file uses (block mappings, block sequences, block scalars).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relaypush.config import PREFIX, SETTING_NAMES, ConfigError, Settings, load_settings
from relaypush.domain.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
EVENTS_MD = ROOT / "docs" / "events.md"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
COMPOSE = ROOT / "compose.yaml"

CONFIG_FILE_NAME = "RELAYPUSH_CONFIG_FILE"
NAME = re.compile(r"RELAYPUSH_[A-Z0-9_]+")
RELAYPUSH_PARTS = ("api", "dispatcher", "projector")


# --------------------------------------------------------------------------------------------
# markdown tables
# --------------------------------------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    """The body of the markdown section ``heading`` (any level), up to the next heading of the
    same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match is not None, f"no section {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table body row in ``text`` (header and rule rows skipped)."""
    rows: list[list[str]] = []
    previous_was_table = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            previous_was_table = False
            continue
        cells = [c.strip() for c in stripped.strip("|").split("|")]
        is_rule = all(re.fullmatch(r":?-{3,}:?", c) for c in cells)
        if previous_was_table and not is_rule:
            rows.append(cells)
        previous_was_table = True
    return rows


def _code(cell: str) -> str | None:
    """The text of a cell that starts with an inline code span, else None."""
    match = re.match(r"`([^`]+)`", cell)
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------
# (a) the event catalogue
# --------------------------------------------------------------------------------------------


def _code_tags() -> list[str]:
    tags = []
    for cls in EVENT_TYPES:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str), f"{cls.__name__} has no string tag"
        tags.append(tag)
    return tags


def _documented_tags() -> list[str]:
    rows = _table_rows(_section(EVENTS_MD.read_text(encoding="utf-8"), "Catalogue"))
    tags = [_code(row[0]) for row in rows]
    assert all(tags), f"a catalogue row does not start with a `tag`: {rows}"
    return [t for t in tags if t is not None]


def test_events_md_lists_every_event_tag_once() -> None:
    documented = _documented_tags()
    assert len(documented) == len(set(documented)), f"tags listed twice: {documented}"
    assert set(documented) == set(_code_tags())


def test_events_md_catalogue_rows_have_subject_when_and_fields() -> None:
    rows = _table_rows(_section(EVENTS_MD.read_text(encoding="utf-8"), "Catalogue"))
    for row in rows:
        assert len(row) == 4, f"expected tag | subject | when | fields: {row}"
        assert all(row), f"empty cell in {row}"
        assert "<tenant>" in row[1], f"subject of {row[0]} does not start with the tenant"


# --------------------------------------------------------------------------------------------
# (b) the settings
# --------------------------------------------------------------------------------------------


def _configuration_text() -> str:
    return CONFIGURATION_MD.read_text(encoding="utf-8")


def _setting_rows() -> dict[str, list[str]]:
    """Table rows whose first cell is a setting name, by name."""
    rows: dict[str, list[str]] = {}
    for row in _table_rows(_configuration_text()):
        name = _code(row[0])
        if name is not None and NAME.fullmatch(name):
            assert name not in rows, f"{name} has two rows"
            rows[name] = row
    return rows


def test_configuration_md_names_only_real_settings() -> None:
    mentioned = set(NAME.findall(_configuration_text()))
    unknown = mentioned - set(SETTING_NAMES) - {CONFIG_FILE_NAME}
    assert not unknown, f"docs/configuration.md names settings that do not exist: {unknown}"


def test_configuration_md_has_a_row_for_every_setting() -> None:
    rows = _setting_rows()
    assert set(rows) == {*SETTING_NAMES, CONFIG_FILE_NAME}
    assert all(len(row) == 3 and all(row) for row in rows.values())


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_configuration_md_default_matches_the_code(name: str) -> None:
    """A default written as a literal reads back as the code's default; a default that is not
    a literal ("unset", "empty") belongs to a setting whose default is None or empty."""
    row = _setting_rows().get(name)
    assert row is not None, f"{name} has no row"
    attr = name.removeprefix(PREFIX).lower()
    expected = getattr(Settings(), attr)
    literal = _code(row[1])
    if literal is None:
        assert expected in (None, ()), f"{name}: documented without a value, is {expected!r}"
    else:
        assert getattr(load_settings({name: literal}), attr) == expected


# --------------------------------------------------------------------------------------------
# compose.yaml, read without PyYAML
# --------------------------------------------------------------------------------------------


@dataclass
class _Service:
    name: str
    image: str = ""
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _services() -> dict[str, _Service]:
    """Each service of compose.yaml with the keys the tests look at.

    ``command`` holds one string per list item (a block scalar item is one string); environment
    entries may be ``KEY: value`` mappings or ``- KEY=value`` items.
    """
    lines = [
        line.rstrip("\n")
        for line in COMPOSE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "\t" not in "".join(lines), "compose.yaml must indent with spaces"
    services: dict[str, _Service] = {}
    in_services = False
    current: _Service | None = None
    key: str | None = None
    key_indent = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        depth = _indent(line)
        text = line.strip()
        i += 1
        if depth == 0:
            in_services = text == "services:"
            current = None
            continue
        if not in_services:
            continue
        if current is None or depth <= key_indent - 2:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+):", text)
            assert match is not None, f"unexpected line under services: {line!r}"
            current = services.setdefault(match.group(1), _Service(match.group(1)))
            key, key_indent = None, depth + 2
            continue
        if depth == key_indent:
            name, _, value = text.partition(":")
            key = name
            if name == "image":
                current.image = _scalar(value)
            continue
        if depth <= key_indent or key is None:
            continue
        if text.startswith("- "):
            item = text[2:]
            if item.rstrip() in ("|", ">", "|-", ">-"):
                block: list[str] = []
                while i < len(lines) and _indent(lines[i]) > depth:
                    block.append(lines[i].strip())
                    i += 1
                item = "\n".join(block)
            item = _scalar(item)
            if key == "command":
                current.command.append(item)
            elif key == "environment":
                env_key, _, env_value = item.partition("=")
                current.environment[env_key] = env_value
            elif key == "volumes":
                current.volumes.append(item)
            elif key == "ports":
                current.ports.append(item)
        elif key == "environment" and depth == key_indent + 2:
            env_key, _, env_value = text.partition(":")
            current.environment[env_key.strip()] = _scalar(env_value)
    return services


@pytest.fixture(name="services", scope="module")
def fx_services() -> dict[str, _Service]:
    return _services()


# --------------------------------------------------------------------------------------------
# (c) compose.yaml sets real settings
# --------------------------------------------------------------------------------------------


def test_compose_names_only_real_settings() -> None:
    """Anywhere in the file, comments included: a misspelt name is caught before it is used."""
    mentioned = set(NAME.findall(COMPOSE.read_text(encoding="utf-8")))
    assert mentioned, "compose.yaml sets no RELAYPUSH_ variable"
    unknown = mentioned - set(SETTING_NAMES)
    assert not unknown, f"compose.yaml names settings that do not exist: {unknown}"


@pytest.mark.parametrize("part", RELAYPUSH_PARTS)
def test_compose_environment_loads(services: dict[str, _Service], part: str) -> None:
    env = services[part].environment
    relaypush_env = {k: v for k, v in env.items() if k.startswith("RELAYPUSH_")}
    assert relaypush_env == env, f"{part} sets variables that are not relaypush settings"
    assert set(env) <= set(SETTING_NAMES)
    try:
        settings = load_settings(env)
    except ConfigError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{part}: {exc}")
    nats_servers = (settings.nats_url or "").split(",")
    assert [s.split("//")[1].split(":")[0] for s in nats_servers] == ["nats-1", "nats-2", "nats-3"]
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql://")
    assert "@postgres:5432/" in settings.database_url
    assert settings.stream_replicas == 3
    assert settings.log_format == "json"


def test_compose_parts_agree_on_the_stream(services: dict[str, _Service]) -> None:
    """Each process creates or updates the stream on start: they must not fight over it."""
    stream = [
        (s.stream_name, s.subject_prefix, s.stream_replicas, s.duplicate_window, s.nats_url)
        for s in (load_settings(services[p].environment) for p in RELAYPUSH_PARTS)
    ]
    assert len(set(stream)) == 1, stream


def test_compose_api_listens_on_all_interfaces_published_on_loopback(
    services: dict[str, _Service],
) -> None:
    api = services["api"]
    settings = load_settings(api.environment)
    assert settings.host == "0.0.0.0"
    assert api.ports, "the api publishes no port"
    for port in api.ports:
        assert port.startswith("127.0.0.1:"), f"{port} is published beyond loopback"
        assert port.rsplit(":", 1)[1] == str(settings.port)
    for part in ("dispatcher", "projector"):
        assert not services[part].ports


# --------------------------------------------------------------------------------------------
# (d) the shape of the deployment
# --------------------------------------------------------------------------------------------


def _flags(command: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (arg.partition("=") for arg in command) if k.startswith("-")}


def test_compose_has_a_three_node_jetstream_cluster(services: dict[str, _Service]) -> None:
    nats = {name: s for name, s in services.items() if s.image.split(":")[0] == "nats"}
    assert sorted(nats) == ["nats-1", "nats-2", "nats-3"]
    names = set()
    for name, service in nats.items():
        assert service.image == "nats:2.10"
        flags = _flags(service.command)
        assert "--jetstream" in flags or "-js" in flags, f"{name} runs without JetStream"
        names.add(flags["--server_name"])
        assert flags["--cluster_name"] == "relaypush"
        assert flags["--cluster"].endswith(":6222")
        routes = {r.split("//")[1] for r in flags["--routes"].split(",")}
        assert routes == {f"{n}:6222" for n in nats}
        store = flags["--store_dir"]
        assert any(v.split(":")[1] == store for v in service.volumes), (
            f"{name}: store not on a volume"
        )
    assert names == set(nats), "every node needs its own server name"


def test_compose_has_postgres_15(services: dict[str, _Service]) -> None:
    postgres = services["postgres"]
    assert postgres.image == "postgres:15"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres.volumes)
    user, password, db = (
        postgres.environment[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    for part in RELAYPUSH_PARTS:
        url = load_settings(services[part].environment).database_url
        assert url == f"postgresql://{user}:{password}@postgres:5432/{db}"


@pytest.mark.parametrize("part", RELAYPUSH_PARTS)
def test_compose_parts_run_their_cli_subcommand(
    services: dict[str, _Service], part: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service = services[part]
    assert service.image == "python:3.11-slim"
    assert any(v.split(":")[:2] == [".", "/src"] for v in service.volumes), "repository not at /src"
    script = service.command[-1]
    assert re.search(r"^pip install .*/src\s*$", script, re.MULTILINE), script
    last = script.strip().splitlines()[-1]
    assert last == f"exec relaypush {part}"
    from relaypush.cli import main  # imports the whole application: only here

    with pytest.raises(SystemExit) as exit_info:
        main([part, "--help"])
    assert exit_info.value.code == 0, f"relaypush {part} is not a CLI subcommand"
    assert f"relaypush {part}" in capsys.readouterr().out


def test_no_dockerfile_at_the_top_level() -> None:
    assert not [p.name for p in ROOT.iterdir() if p.name.lower().startswith("dockerfile")]
