"""`labrecon check --show-config`: every effective value with its source, and never a secret."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import BaseModel, SecretBytes, SecretStr

from supervisor.config import ConfigError, load_settings
from supervisor.config_sources import DEFAULT, REDACTED, config_values, leaves, plain
from transports.cli import main

OPERATOR_TOKEN = "operator-token-Zq8x1V4mT7pL2cN9"
ALICE_TOKEN = "alice-token-Hk3W9rYb6uE1sD5gF0aJ"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.lower().startswith("labrecon_"):
            monkeypatch.delenv(key)


def write(tmp_path, text):
    path = tmp_path / "labrecon.toml"
    path.write_text(text)
    return path


def by_key(path=None):
    return {value.key: value for value in config_values(path)}


def sources(path=None):
    return {key: value.source for key, value in by_key(path).items()}


# --- where each value came from --------------------------------------------------------------------


def test_with_no_file_and_no_environment_every_value_is_a_default():
    values = config_values()
    assert values and {value.source for value in values} == {DEFAULT}
    shown = {value.key: value.value for value in values}
    assert shown["policy.max_hosts"] == 256
    assert shown["policy.allowed_networks"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert shown["auth.token"] is None and shown["auth.tokens"] == [] and shown["faults"] == []


def test_values_from_the_file_name_the_file_and_the_rest_stay_defaults(tmp_path):
    path = write(tmp_path, "[policy]\nmax_hosts = 12\n[http]\nport = 9000\n")
    found = by_key(path)
    assert (found["policy.max_hosts"].value, found["policy.max_hosts"].source) == (12, f"file {path}")
    assert (found["http.port"].value, found["http.port"].source) == (9000, f"file {path}")
    assert found["policy.dns"].source == DEFAULT and found["http.host"].source == DEFAULT


def test_values_from_the_environment_name_the_variable_as_it_was_written(monkeypatch):
    monkeypatch.setenv("LABRECON_POLICY__MAX_HOSTS", "3")
    monkeypatch.setenv("labrecon_logging__level", "DEBUG")
    found = by_key()
    assert (found["policy.max_hosts"].value, found["policy.max_hosts"].source) == (3, "env LABRECON_POLICY__MAX_HOSTS")
    assert (found["logging.level"].value, found["logging.level"].source) == ("debug", "env labrecon_logging__level")


def test_the_environment_wins_over_the_file_key_by_key(tmp_path, monkeypatch):
    path = write(tmp_path, "[tools.nmap]\ntimeout_sec = 100\nconcurrency = 3\n")
    monkeypatch.setenv("LABRECON_TOOLS__NMAP__TIMEOUT_SEC", "42")
    found = by_key(path)
    assert (found["tools.nmap.timeout_sec"].value, found["tools.nmap.timeout_sec"].source) == (
        42.0,
        "env LABRECON_TOOLS__NMAP__TIMEOUT_SEC",
    )
    assert (found["tools.nmap.concurrency"].value, found["tools.nmap.concurrency"].source) == (3, f"file {path}")
    assert found["tools.nmap.max_queue"].source == DEFAULT


def test_nested_tool_tables_are_traced_to_their_own_keys(tmp_path, monkeypatch):
    path = write(tmp_path, '[tools.masscan]\nbinary = "/opt/masscan"\n[tools.nmap.breaker]\nopen_sec = 5\n')
    monkeypatch.setenv("LABRECON_TOOLS__GOBUSTER__BREAKER__JITTER", "0.5")
    found = sources(path)
    assert found["tools.masscan.binary"] == f"file {path}"
    assert found["tools.masscan.max_rate"] == DEFAULT
    assert found["tools.nmap.breaker.open_sec"] == f"file {path}"
    assert found["tools.nmap.breaker.failure_threshold"] == DEFAULT
    assert found["tools.gobuster.breaker.jitter"] == "env LABRECON_TOOLS__GOBUSTER__BREAKER__JITTER"


def test_a_table_given_as_json_in_one_variable_is_traced_to_that_variable(tmp_path, monkeypatch):
    path = write(tmp_path, "[scans]\nretention_days = 2\n")
    monkeypatch.setenv("LABRECON_SCANS", '{"max_scans": 5}')
    found = by_key(path)
    assert (found["scans.max_scans"].value, found["scans.max_scans"].source) == (5, "env LABRECON_SCANS")
    assert found["scans.retention_days"].source == f"file {path}"


def test_each_entry_of_a_list_of_tables_shows_its_fields(tmp_path):
    path = write(
        tmp_path,
        '[[faults]]\ntool = "nmap"\nkind = "fail"\ncount = 2\n'
        '[[faults]]\ntool = "masscan"\nkind = "delay"\ndelay_sec = 0.5\n',
    )
    found = by_key(path)
    assert (found["faults.0.tool"].value, found["faults.0.count"].value) == ("nmap", 2)
    assert found["faults.0.count"].source == f"file {path}"
    assert (found["faults.0.delay_sec"].value, found["faults.0.delay_sec"].source) == (1.0, DEFAULT)
    assert (found["faults.1.kind"].value, found["faults.1.delay_sec"].value) == ("delay", 0.5)
    assert "faults" not in found and "faults.2.tool" not in found


def test_a_list_from_the_environment_replaces_the_files_list_whole(tmp_path, monkeypatch):
    path = write(tmp_path, '[[faults]]\ntool = "nmap"\nkind = "fail"\ncount = 2\n')
    monkeypatch.setenv("LABRECON_FAULTS", '[{"tool": "gobuster", "kind": "crash"}]')
    found = by_key(path)
    assert (found["faults.0.tool"].value, found["faults.0.tool"].source) == ("gobuster", "env LABRECON_FAULTS")
    # The file's count is gone with its list: the entry's count is the default again.
    assert (found["faults.0.count"].value, found["faults.0.count"].source) == (None, DEFAULT)


def test_a_map_both_layers_give_is_merged_and_says_so(tmp_path, monkeypatch):
    path = write(tmp_path, '[policy.hosts]\n"web.lab.internal" = "10.0.0.5"\n')
    monkeypatch.setenv("LABRECON_POLICY__HOSTS", '{"db.lab.internal": "10.0.0.6"}')
    found = by_key(path)["policy.hosts"]
    assert found.value == {"web.lab.internal": "10.0.0.5", "db.lab.internal": "10.0.0.6"}
    assert found.source == f"env LABRECON_POLICY__HOSTS over file {path}"


def test_every_leaf_of_the_settings_is_listed_once():
    settings = load_settings()
    expected = set()

    def walk(data, prefix):
        if isinstance(data, dict) and prefix[-1:] not in (("hosts",), ("headers",)):  # maps are leaves
            for key, value in data.items():
                walk(value, (*prefix, key))
        else:
            expected.add(".".join(prefix))

    walk(settings.model_dump(mode="json"), ())
    keys = [value.key for value in config_values()]
    assert len(keys) == len(set(keys))
    assert set(keys) == expected


# --- secrets ----------------------------------------------------------------------------------------


def test_secrets_from_the_file_and_the_environment_are_redacted_whatever_their_length(tmp_path, monkeypatch):
    path = write(tmp_path, f'[[auth.tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\nadmin = true\n')
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", OPERATOR_TOKEN)
    found = by_key(path)
    assert (found["auth.token"].value, found["auth.token"].source) == (REDACTED, "env LABRECON_AUTH__TOKEN")
    assert (found["auth.tokens.0.token"].value, found["auth.tokens.0.token"].source) == (REDACTED, f"file {path}")
    assert found["auth.token"].secret and found["auth.tokens.0.token"].secret
    assert (found["auth.tokens.0.name"].value, found["auth.tokens.0.admin"].value) == ("alice", True)
    assert not found["auth.tokens.0.name"].secret
    everything = repr(list(found.values()))
    assert OPERATOR_TOKEN not in everything and ALICE_TOKEN not in everything


def test_secrets_are_found_by_their_type_at_any_depth_not_by_their_name():
    class Inner(BaseModel):
        password: SecretStr
        note: str = "public"

    class Outer(BaseModel):
        inner: Inner
        keys: tuple[SecretStr, ...]
        by_name: dict[str, SecretBytes]
        entries: tuple[Inner, ...]

    model = Outer(
        inner=Inner(password=SecretStr("p1-long-password")),
        keys=(SecretStr("k"), SecretStr("k2-much-longer")),
        by_name={"a": SecretBytes(b"bytes-secret")},
        entries=(Inner(password=SecretStr("p2")),),
    )
    shown = {".".join(map(str, key)): plain(value) for key, value in leaves(model)}
    assert shown == {
        "inner.password": REDACTED,
        "inner.note": "public",
        "keys": [REDACTED, REDACTED],
        "by_name": {"a": REDACTED},
        "entries.0.password": REDACTED,
        "entries.0.note": "public",
    }


def test_the_digest_does_not_change_with_a_secret_alone(monkeypatch):
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", OPERATOR_TOKEN)
    first = load_settings().digest()
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", ALICE_TOKEN)
    assert load_settings().digest() == first


# --- through the command line -------------------------------------------------------------------------


@pytest.fixture
def configured(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        f'[policy]\nmax_hosts = 12\n[[auth.tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\n'
        "[tools.nmap.breaker]\nopen_sec = 5\n",
    )
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", OPERATOR_TOKEN)
    return path


def test_show_config_prints_aligned_key_value_and_source(configured, capsys):
    assert main(["check", "--config", str(configured), "--show-config"]) == 0
    out = capsys.readouterr().out
    assert OPERATOR_TOKEN not in out and ALICE_TOKEN not in out
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == ["KEY", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows.keys() == by_key(configured).keys()
    assert rows["policy.max_hosts"].split() == ["policy.max_hosts", "12", "file", str(configured)]
    assert rows["auth.token"].split() == ["auth.token", REDACTED, "env", "LABRECON_AUTH__TOKEN"]
    assert rows["auth.tokens.0.token"].split() == ["auth.tokens.0.token", REDACTED, "file", str(configured)]
    assert rows["auth.tokens.0.name"].split()[1] == '"alice"'
    assert rows["tools.nmap.breaker.open_sec"].split()[1:] == ["5.0", "file", str(configured)]
    # Values and sources start in the same columns on every row whose value fits its column.
    value_at, source_at = header.index("VALUE"), header.index("SOURCE")
    fitting = 0
    for value in by_key(configured).values():
        text = REDACTED if value.secret else json.dumps(value.value)
        line = rows[value.key]
        if len(text) <= source_at - value_at - 2:
            fitting += 1
            assert line[value_at:source_at].rstrip() == text and line[source_at:] == value.source, line
    assert fitting > len(rows) * 0.9


def test_show_config_json_maps_every_key_to_its_value_and_source(configured, capsys):
    assert main(["check", "--config", str(configured), "--show-config", "--json"]) == 0
    out = capsys.readouterr().out
    assert OPERATOR_TOKEN not in out and ALICE_TOKEN not in out
    shown = json.loads(out)
    assert list(shown) == list(by_key(configured))
    assert all(set(entry) == {"value", "source"} for entry in shown.values())
    assert shown["policy.max_hosts"] == {"value": 12, "source": f"file {configured}"}
    assert shown["auth.token"] == {"value": REDACTED, "source": "env LABRECON_AUTH__TOKEN"}
    assert shown["auth.tokens.0.token"] == {"value": REDACTED, "source": f"file {configured}"}
    assert shown["policy.allowed_networks"]["value"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


@pytest.mark.parametrize("as_json", [False, True])
def test_show_config_with_an_invalid_config_exits_2_naming_the_key(tmp_path, capsys, as_json):
    path = write(tmp_path, "[policy]\nmax_hosts = 0\n[tools.nmap]\nconcurency = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    argv = ["check", "--config", str(path), "--show-config", *(["--json"] if as_json else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"labrecon: {caught.value}\n"
    assert "policy.max_hosts:" in captured.err and "tools.nmap.concurency: unknown key" in captured.err


@pytest.mark.parametrize("argv", [["check"], ["check", "--show-config"]])
def test_a_variable_that_is_not_json_for_a_table_exits_2_without_quoting_it(monkeypatch, capsys, argv):
    monkeypatch.setenv("LABRECON_AUTH__TOKENS", f'[{{"name": "alice", "token": "{ALICE_TOKEN}"')
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("labrecon: configuration is invalid:") and '"auth"' in err and "not valid JSON" in err
    assert ALICE_TOKEN not in err
