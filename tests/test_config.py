"""Configuration: defaults < TOML file < LABRECON_* environment, and loud refusals."""

import ipaddress

import pytest

from actors.tools.gobuster import GobusterSettings
from actors.tools.masscan import MasscanSettings
from supervisor.config import ConfigError, load_settings, settings_from


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("LABRECON_"):
            monkeypatch.delenv(key)


def write(tmp_path, text):
    path = tmp_path / "labrecon.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_lab_ranges_and_per_tool_limits():
    s = load_settings()
    assert [str(n) for n in s.policy.allowed_networks] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert s.policy.allowed_domains == ("lab.internal",)
    assert s.policy.max_hosts == 256
    assert (s.policy.dns_timeout_sec, s.policy.dns_concurrency) == (2.0, 8)
    assert (s.tools.nmap.concurrency, s.tools.masscan.concurrency, s.tools.gobuster.concurrency) == (2, 1, 2)
    assert s.tools.nmap.max_queue == 16 and s.tools.nmap.timeout_sec == 300
    assert isinstance(s.tools.masscan, MasscanSettings) and s.tools.masscan.max_rate == 1000


def test_partial_tool_table_keeps_that_tools_own_defaults(tmp_path):
    s = load_settings(write(tmp_path, '[tools.masscan]\nbinary = "/opt/masscan"\n'))
    assert s.tools.masscan.binary == "/opt/masscan"
    assert s.tools.masscan.concurrency == 1
    assert s.tools.nmap.binary == "nmap"


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[tools.nmap]\ntimeout_sec = 100\nconcurrency = 3\n")
    monkeypatch.setenv("LABRECON_TOOLS__NMAP__TIMEOUT_SEC", "42")
    s = load_settings(path)
    assert s.tools.nmap.timeout_sec == 42
    assert s.tools.nmap.concurrency == 3


def test_config_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LABRECON_CONFIG", str(write(tmp_path, "[policy]\nmax_hosts = 4\n")))
    assert load_settings().policy.max_hosts == 4


def test_log_level_in_any_case(tmp_path, monkeypatch):
    assert load_settings(write(tmp_path, '[logging]\nlevel = "Debug"\n')).logging.level == "debug"
    monkeypatch.setenv("LABRECON_LOGGING__LEVEL", "WARNING")
    assert load_settings().logging.level == "warning"
    monkeypatch.setenv("LABRECON_LOGGING__LEVEL", "LOUD")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "logging.level" in str(err.value)


def test_static_hosts_map(tmp_path):
    s = load_settings(write(tmp_path, '[policy.hosts]\n"Web.Lab.Internal." = "10.1.2.3"\n'))
    assert s.policy.hosts == {"web.lab.internal": ipaddress.ip_address("10.1.2.3")}


@pytest.mark.parametrize(
    "text, key",
    [
        ("[tools.nmap]\nconcurrency = 0\n", "tools.nmap.concurrency"),
        ("[tools.nmap]\nbinry = 'x'\n", "tools.nmap.binry: unknown key"),
        ("[policy]\nallowed_networks = ['10.0.0.1/8']\n", "policy.allowed_networks"),
        ("[policy]\nmax_hosts = -1\n", "policy.max_hosts"),
        ("[policy]\ndns_timeout_sec = 0\n", "policy.dns_timeout_sec"),
        ("[policy]\ndns_concurrency = 0\n", "policy.dns_concurrency"),
        ("[tools.nmap]\nallowed_scripts = ['exploit']\n", "tools.nmap.allowed_scripts"),
        ("[tools.nmap]\ntimeout_sec = 500\nmax_timeout_sec = 100\n", "tools.nmap"),
        ("[[faults]]\ntool = 'nmap'\nkind = 'explode'\n", "faults.0.kind"),
        ("[[faults]]\ntool = 'nmap'\nkind = 'crash'\ncount = 1\nevery = 2\n", "faults.0"),
        ("[supervisor]\non_intensity_exceeded = 'panic'\n", "supervisor.on_intensity_exceeded"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert key in str(err.value)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[policy\n"))


def test_embedders_may_pass_a_dict():
    s = settings_from({"tools": {"gobuster": {"max_threads": 4}}})
    assert isinstance(s.tools.gobuster, GobusterSettings) and s.tools.gobuster.max_threads == 4
    assert s.digest() != settings_from(None).digest()
