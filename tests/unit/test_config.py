"""The typed configuration: defaults in one place, every problem located, secrets kept secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import Config, flat_defaults, load_config, plain
from engine.devservers import database_dsn_from_config
from engine.durations import parse_duration
from engine.exceptions import ConfigError, ConfigProblem
from steps.base import Settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "https://hooks.slack.example/T000/B000/s3cr3t-token"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | str | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


# ------------------------------------------------------------------ defaults


def test_an_empty_file_is_the_default_configuration(tmp_path):
    assert load_config(write(tmp_path, ""), environ={}) == Config()
    assert load_config(write(tmp_path, "# nothing but comments\n"), environ={}) == Config()


def test_a_section_with_every_key_commented_out_means_its_defaults(tmp_path):
    text = "redis:\n  # url: redis://x\nnotifications:\n  slack:\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.redis == Config().redis and config.notifications == Config().notifications


def test_durations_are_written_as_today_and_held_as_seconds(tmp_path):
    text = ("service: {lease: 3s, shutdown_grace: 1m30s, retention: 7d}\n"
            "nats: {ack_wait: 250ms}\nai: {timeout: 45}\n")
    config = load_config(write(tmp_path, text), environ={})
    service = config.service
    assert (service.lease, service.shutdown_grace, service.retention) == (3.0, 90.0, 604800.0)
    assert config.nats.ack_wait == 0.25 and config.ai.timeout == 45.0
    assert config.remediation.rate_limit.per == 3600.0


def test_numbers_are_read_as_text_where_text_is_due(tmp_path):
    config = load_config(write(tmp_path, "service: {replica_id: 7}\ndatabase: {user: 1000}\n"),
                         environ={"AETHERIUS_DATABASE__PASSWORD": "1234"})
    assert config.service.replica_id == "7" and config.database.user == "1000"
    assert plain(config.database.password) == "1234"


def test_the_default_path_is_used_only_if_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}) == Config()
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", "http: {port: 9000}\n")
    assert load_config(environ={}).http.port == 9000


def test_a_missing_file_given_by_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_step_settings_carry_the_configuration_to_the_steps(tmp_path):
    text = """\
agent_manager: {url: "http://agent:8080", timeout: 12s, cluster: prod}
ai: {reasoning_service_url: "http://ai:9000", timeout: 5s, max_retries: 1}
remediation: {dry_run: false, allowed_actions: [scale], max_memory_factor: 1.5, max_memory_mib: 4096,
              max_replicas: 9}
http: {port: 9999}
notifications: {webhooks: {ops: "http://hooks/ops", muted: ""}}
"""
    settings = load_config(write(tmp_path, text), environ={
        "AETHERIUS_NOTIFICATIONS__SLACK__WEBHOOK_URL": SECRET}).step_settings(live=False, virtual_time=True)
    assert settings == Settings(
        agent_manager_url="http://agent:8080", reasoning_service_url="http://ai:9000", ai_timeout=5.0,
        ai_max_retries=1, slack_webhook_url=SECRET, webhooks={"ops": "http://hooks/ops"},
        command_timeout=12.0, cluster="prod", dry_run=False, allowed_actions=frozenset({"scale"}),
        max_memory_factor=1.5, max_memory_mib=4096, max_replicas=9, public_url="http://localhost:9999",
        live=False, virtual_time=True)


def test_the_steps_defaults_are_those_of_an_empty_configuration():
    """Settings() is what tests and embedders build by hand: it must not drift from the model."""
    assert Config().step_settings() == Settings()


# ------------------------------------------------------------------ problems


def test_a_misspelt_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "rules:\n  dir: rules\nservice:\n  lease: 5s\n  leese: 5s\n")
    assert problems(path) == [f"{path}:5: service.leese: unknown key (did you mean 'lease'?)"]


def test_the_path_is_reported_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "service: {leese: 5s}\n")
    assert problems("config.yaml") == ["config.yaml:1: service.leese: unknown key (did you mean 'lease'?)"]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path):
    path = write(tmp_path, """\
nats:
  batch: 0
sevice:
  lease: 5s
http:
  port: eighty
remediation:
  allowed_actions: [scale, nuke]
  rate_limit: {max: 3, per: soon}
intake:
  max_event_bytes: lots
""")
    found = problems(path)
    assert [p.split(": ", 1)[0] for p in found] == [f"{path}:{n}" for n in (2, 3, 6, 8, 9, 11)]
    assert found[0].endswith("nats.batch: Input should be greater than or equal to 1")
    assert "sevice: unknown key (did you mean 'service'?)" in found[1]
    assert "http.port: " in found[2]
    assert "remediation.allowed_actions: unknown remediation action(s) 'nuke'" in found[3]
    assert "remediation.rate_limit.per: expected a duration" in found[4]
    assert "intake.max_event_bytes: Input should be a valid integer" in found[5]


def test_an_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path):
    found = problems(write(tmp_path, "redis:\n  zzz: 1\n"))
    assert found == [f"{tmp_path / 'config.yaml'}:2: redis.zzz: unknown key (known: url, prefix)"]


def test_a_yaml_syntax_error_has_its_line(tmp_path):
    path = write(tmp_path, "nats:\n  url: nats://x\n  subjects: [a, b\nhttp: {}\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:4: YAML: expected ',' or ']'"), found


def test_a_duplicate_key_is_an_error(tmp_path):
    (found,) = problems(write(tmp_path, "http:\n  port: 1\n  port: 2\n"))
    assert ":3: YAML: duplicate key 'port' (first at line 2)" in found


def test_the_file_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})


def test_a_problem_is_data_with_its_location(tmp_path):
    path = write(tmp_path, "service:\n  leese: 5s\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [
        ConfigProblem(str(path), 2, "service.leese", "unknown key (did you mean 'lease'?)")]


# ------------------------------------------------------------------ environment


def test_environment_overrides_the_file_parsed_as_yaml_scalars(tmp_path):
    path = write(tmp_path, "http: {port: 8081}\nremediation: {dry_run: true}\n")
    config = load_config(path, environ={
        "AETHERIUS_HTTP__PORT": "9090", "AETHERIUS_REMEDIATION__DRY_RUN": "false",
        "AETHERIUS_AI__TIMEOUT": "45s", "AETHERIUS_NATS__SUBJECTS": "[a.b, c.d]",
        "AETHERIUS_REMEDIATION__RATE_LIMIT__MAX": "5", "AETHERIUS_NOTIFICATIONS__WEBHOOKS__OPS": "http://hooks/ops",
        "AETHERIUS_AGENT_MANAGER__URL": "",      # empty: not set
        "AETHERIUS_TEST_DATABASE_DSN": "ignored: no double underscore", "OTHER__X": "ignored",
    })
    assert config.http.port == 9090 and config.remediation.dry_run is False and config.ai.timeout == 45.0
    assert config.nats.subjects == ("a.b", "c.d") and config.remediation.rate_limit.max == 5
    assert plain(config.notifications.webhooks["ops"]) == "http://hooks/ops"
    assert config.agent_manager.url is None


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path):
    path = write(tmp_path, "service:\n  leese: 5s\n")
    found = problems(path, {"AETHERIUS_AI__TIMEOUT": "soon", "AETHERIUS_SERVICE__LEASSE": "3s"})
    assert found == [
        f"{path}:2: service.leese: unknown key (did you mean 'lease'?)",
        "AETHERIUS_AI__TIMEOUT: ai.timeout: expected a duration like '30s', '5m' or '1h30m', got 'soon'",
        "AETHERIUS_SERVICE__LEASSE: service.leasse: unknown key (did you mean 'lease'?)",
    ]


def test_the_environment_cannot_nest_under_a_value(tmp_path):
    found = problems(None, {"AETHERIUS_HTTP__PORT__X": "1", "AETHERIUS_HTTP__PORT": "1"})
    assert found == ["AETHERIUS_HTTP__PORT__X: http.port: is not a section"]


# ------------------------------------------------------------------ secrets


def test_secrets_are_in_no_repr_and_no_error(tmp_path):
    path = write(tmp_path, f"""\
database: {{password: hunter2-pw, dsn: "postgresql://u:hunter2-dsn@db/x"}}
notifications:
  slack: {{webhook_url: "{SECRET}"}}
  webhooks: {{ops: "http://hooks/hunter2-hook"}}
""")
    config = load_config(path, environ={})
    for text in (repr(config), str(config), repr(config.step_settings()), str(config.model_dump())):
        assert "hunter2" not in text and "s3cr3t" not in text, text
    # what reads them gets the plain value
    assert config.step_settings().slack_webhook_url == SECRET
    assert config.step_settings().webhooks == {"ops": "http://hooks/hunter2-hook"}
    assert database_dsn_from_config(config.database) == "postgresql://u:hunter2-dsn@db/x"
    host_only = Config.model_validate({"database": {"host": "db", "password": "hunter2 pw"}})
    assert database_dsn_from_config(host_only.database) == "postgresql://postgres:hunter2%20pw@db:5432/aetherius_orchestrator"

    # a secret of the wrong shape is an error that does not repeat it
    bad = write(tmp_path, f"notifications:\n  slack: {{webhook_url: [\"{SECRET}\"]}}\n", "bad.yaml")
    found = problems(bad, {"AETHERIUS_DATABASE__PASSWORD": "[hunter2-env]"})
    assert len(found) == 2 and not any("hunter2" in p or "s3cr3t" in p for p in found), found


# ------------------------------------------------------------------ the docs agree with the model


def _readme_table() -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Configuration\n"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z_.]+)` \| ([^|]*) \|", section, flags=re.M)
    assert rows, "no configuration table in the README"
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys)), "a key documented twice"
    return {key: default.strip() for key, default in rows}


def _same(documented: str, default: Any) -> bool:
    if documented.startswith("none"):
        return default is None or default == {}
    match = re.match(r"`([^`]*)`", documented)
    if match is None:
        return False
    if isinstance(default, str):
        return match.group(1) == default
    value = yaml.safe_load(match.group(1))
    if isinstance(default, float) and isinstance(value, str):
        return parse_duration(value) == default
    if isinstance(default, tuple):
        return isinstance(value, list) and tuple(value) == default
    if isinstance(default, Path):
        return str(value) == str(default)
    return bool(value == default and type(value) is type(default)) or (
        isinstance(default, float) and isinstance(value, int) and float(value) == default)


def test_the_readme_documents_every_key_with_its_default():
    documented = _readme_table()
    model = flat_defaults()
    assert sorted(set(model) - set(documented)) == [], "keys of the model missing from the README"
    assert sorted(set(documented) - set(model)) == [], "keys in the README that the model does not have"
    wrong = {key: (documented[key], model[key]) for key in model if not _same(documented[key], model[key])}
    assert wrong == {}, "README default differs from the model"


def _flatten(data: dict[str, Any], leaves: set[str], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict) and name not in leaves:
            out.update(_flatten(value, leaves, name + "."))
        else:
            out[name] = value
    return out


def test_the_shipped_file_lists_every_key_with_its_default_commented_out():
    text = (REPO / "config" / "config.yaml").read_text(encoding="utf-8")
    assert load_config(REPO / "config" / "config.yaml", environ={}) == Config()   # sets nothing
    uncommented = "\n".join(line[2:] for line in text.splitlines() if re.match(r"# *[a-z_]+:( |$)", line))
    shown = yaml.safe_load(uncommented)
    assert Config.model_validate(shown) == Config()
    assert set(_flatten(shown, set(flat_defaults()))) == set(flat_defaults())


def test_logging_settings(tmp_path):
    config = load_config(write(tmp_path, "logging: {level: DEBUG, format: json, file: null, max_bytes: 0}\n"),
                         environ={"AETHERIUS_LOGGING__BACKUPS": "2"})
    assert config.logging.model_dump() == {"level": "debug", "format": "json", "file": None, "max_bytes": 0,
                                           "backups": 2}
    found = problems(write(tmp_path, "logging:\n  format: xml\n  level: loud\n"))
    assert [p.split(": ", 1)[1] for p in found] == [
        "logging.format: Input should be 'text' or 'json'",
        "logging.level: Input should be 'debug', 'info', 'warning', 'error' or 'critical'"]


def test_the_api_listens_on_loopback_unless_told_otherwise() -> None:
    assert Config().http.host == "127.0.0.1"
    assert load_config(environ={"AETHERIUS_HTTP__HOST": "0.0.0.0"}).http.host == "0.0.0.0"
