"""nmap reads its scripts from its own data directory, and -sV waits until every installed script is judged.

nmap finds `~/.nmap` through the password database, not $HOME, so a run's
private HOME does not hide it; NMAPDIR does. Real nmap is only asked
`--script-help`, inside private mount and network namespaces, so a decoy
`~/.nmap` is seen by that nmap alone and nothing is scanned or resolved.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from actors.nmap_scripts import NMAP_SCRIPTS
from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.results import ErrorType, InvalidCall
from actors.runner import ProcessRun, RunRequest
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS
from actors.tools.nmap import NmapSettings
from tests.fakes.install import FAKES_DIR
from tests.helpers import wait_until
from tests.runtimes import scan_calls
from transports.cli import main

NMAP = TOOL_SPECS["nmap"]
POLICY = TargetPolicy(PolicySettings(dns=False))
UNVETTED = "zz-new-version-probe"


def data_directory(path: Path, *extra_entries: str) -> Path:
    """A copy of the fake nmap's data directory, its script.db with `extra_entries` added."""
    (path / "scripts").mkdir(parents=True)
    shutil.copy(FAKES_DIR / "nse_main.lua", path / "nse_main.lua")
    entries = (FAKES_DIR / "scripts" / "script.db").read_text().splitlines() + list(extra_entries)
    (path / "scripts" / "script.db").write_text("\n".join(entries) + "\n")
    return path


def entry(name: str, *categories: str) -> str:
    listed = "".join(f'"{category}", ' for category in categories)
    return f'Entry {{ filename = "{name}.nse", categories = {{ {listed}}} }}'


def prepare(settings: NmapSettings, **arguments):
    return prepare_call(NMAP, {"target": "10.0.0.5", **arguments}, settings=settings, policy=POLICY)


def refusal(settings: NmapSettings, **arguments) -> InvalidCall:
    with pytest.raises(InvalidCall) as info:
        prepare(settings, **arguments)
    return info.value


def binary_check(runtime, name: str = "nmap"):
    check = {check.name: check for check in runtime.status().health.checks}[f"binary:{name}"]
    return check if check.data.get("probed") else None


# ---------------------------------------------------------------- NMAPDIR


def test_every_nmap_run_gets_nmapdir_the_directory_holding_its_script_db(make_runtime):
    runtime = make_runtime()
    outcome = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"})
    assert outcome.ok, outcome.error
    (run,) = scan_calls(runtime.settings.tools.nmap.binary)
    nmapdir = Path(run["env"]["NMAPDIR"])
    assert nmapdir == FAKES_DIR  # the fake nmap, like nmap run from its build tree, keeps its data beside itself
    assert (nmapdir / "scripts" / "script.db").is_file() and (nmapdir / "nse_main.lua").is_file()
    assert run["env"]["HOME"] != str(nmapdir)
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "22"}).ok
    (masscan_run,) = scan_calls(runtime.settings.tools.masscan.binary)
    assert "NMAPDIR" not in masscan_run["env"]


def test_a_configured_datadir_is_the_one_runs_get(make_runtime, tmp_path):
    data = data_directory(tmp_path / "nmap-data")
    runtime = make_runtime(tools={"nmap": {"datadir": str(data)}})
    assert runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}).ok
    (run,) = scan_calls(runtime.settings.tools.nmap.binary)
    assert run["env"]["NMAPDIR"] == str(data)


def test_nmap_is_told_it_is_privileged_only_when_the_settings_say_so(make_runtime):
    runtime = make_runtime(tools={"nmap": {"privileged": True}})
    assert runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}).ok
    (run,) = scan_calls(runtime.settings.tools.nmap.binary)
    assert run["env"]["NMAP_PRIVILEGED"] == "1"
    plain = make_runtime()
    assert plain.call("nmap", {"target": "10.0.0.5", "ports": "22"}).ok
    (run,) = scan_calls(plain.settings.tools.nmap.binary)
    assert "NMAP_PRIVILEGED" not in run["env"]


def test_the_data_directory_is_found_beside_the_binary_an_install_runs(tmp_path):
    prefix = tmp_path / "opt" / "nmap"
    (prefix / "bin").mkdir(parents=True)
    binary = prefix / "bin" / "nmap"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    data = data_directory(prefix / "share" / "nmap")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nmap").symlink_to(binary)  # found through the link, as nmap finds its own
    for configured in (binary, tmp_path / "bin" / "nmap"):
        assert NMAP.run_environment(NmapSettings(binary=str(configured))) == {"NMAPDIR": str(data)}
    missing = NmapSettings(binary=str(tmp_path / "no-such-nmap"))
    assert missing.data.directory is None and NMAP.run_environment(missing) == {}
    assert "was not found" in str(refusal(missing, ports="22"))


def test_nmap_without_a_data_directory_is_never_run_and_health_and_check_say_why(make_runtime, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    runtime = make_runtime(tools={"nmap": {"datadir": str(empty)}})
    refused = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"})
    assert refused.error_type is ErrorType.VALIDATION
    assert f"datadir {empty} does not hold nse_main.lua and scripts/script.db" in refused.error.message
    assert scan_calls(runtime.settings.tools.nmap.binary) == []
    check = wait_until(lambda: binary_check(runtime), what="the nmap probe")
    assert not check.ok and f"datadir {empty} does not hold" in check.detail
    assert runtime.status().health.status == "degraded"
    nmap = runtime.settings.tools.nmap.binary
    config = tmp_path / "labrecon.toml"
    config.write_text(f'[tools.nmap]\nbinary = "{nmap}"\ndatadir = "{empty}"\n')
    main(["check", "--config", str(config)])
    assert f"WARNING  [tools.nmap] datadir {empty} does not hold" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the real nmap (only --script-help, no scan)")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for private mount and network namespaces")
def test_real_nmap_run_as_the_runner_runs_it_ignores_a_decoy_home_nmap(tmp_path):
    """The decoy home is mounted over the password database's home in a private mount namespace."""
    home = pwd.getpwuid(os.getuid()).pw_dir  # where nmap looks for ~/.nmap, whatever HOME says
    decoy = tmp_path / "home"
    (decoy / ".nmap" / "scripts").mkdir(parents=True)
    (decoy / ".nmap" / "scripts" / "banner.nse").write_text(
        'description = [[DECOY planted in the home directory]]\ncategories = {"safe"}\n'
        "portrule = function() return false end\naction = function() end\n"
    )
    probe = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make private mount and network namespaces: {probe.stderr.decode().strip()}")
    settings = NmapSettings()
    inside = f'mount --bind "$1" "{home}" && exec nmap --script-help banner'

    def script_help(env):
        argv = ("unshare", "-m", "-n", "sh", "-c", inside, "sh", str(decoy))
        return ProcessRun(RunRequest(argv=argv, timeout_sec=60, env=env)).run()

    planted = script_help({})  # without NMAPDIR: what nmap did before every run got it
    assert planted.returncode == 0, planted.stderr
    assert b"DECOY" in planted.stdout
    result = script_help(NMAP.run_environment(settings))
    assert result.returncode == 0, result.stderr
    assert b"DECOY" not in result.stdout and b"banner grabber" in result.stdout
    assert NMAP.run_environment(settings)["NMAPDIR"] == settings.data.directory


# ---------------------------------------------------------------- scripts nobody vetted


def test_an_unvetted_installed_script_refuses_version_detection_but_not_vetted_scripts(tmp_path):
    assert NMAP_SCRIPTS.why_denied(UNVETTED) is None and UNVETTED not in NMAP_SCRIPTS.vetted
    data = data_directory(tmp_path / "nmap-data", entry(UNVETTED, "safe", "version"))
    settings = NmapSettings(datadir=str(data))
    assert settings.data.unvetted == (UNVETTED,)
    for arguments, field in (({"scan_type": "version"}, "scan_type"), ({"extra_args": "-sV"}, "extra_args")):
        error = refusal(settings, **arguments)
        assert error.field == field
        assert f"nmap (data in {data}) has scripts this labrecon has not vetted: {UNVETTED}" in str(error)
    assert "--script" in prepare(settings, scripts=["banner"], extra_args="-sC").argv
    assert "-sT" in prepare(settings, scan_type="connect").argv
    assert "-sV" in prepare(NmapSettings(datadir=str(data_directory(tmp_path / "vetted"))), scan_type="version").argv


def test_a_denied_script_the_installed_nmap_files_under_version_refuses_version_detection(tmp_path):
    data = data_directory(tmp_path / "nmap-data", entry("ftp-bounce", "default", "safe", "version"))
    settings = NmapSettings(datadir=str(data))
    assert settings.data.unvetted == ()
    assert "version detection (-sV) runs nmap's version scripts" in str(refusal(settings, scan_type="version"))


def test_a_script_db_line_that_is_not_an_entry_makes_nmap_unusable(tmp_path):
    data = data_directory(tmp_path / "nmap-data", 'Entry { filename = "odd.nse", categories = { version } }')
    assert "script.db cannot be read" in str(refusal(NmapSettings(datadir=str(data)), ports="22"))


def test_unvetted_scripts_are_logged_shown_in_health_and_check_and_refuse_sV_at_runtime(
    make_runtime, tmp_path, caplog, capsys
):
    data = data_directory(tmp_path / "nmap-data", entry(UNVETTED, "safe", "version"))
    with caplog.at_level(logging.WARNING, logger="supervisor.health"):
        runtime = make_runtime(tools={"nmap": {"datadir": str(data)}})
    assert any(UNVETTED in record.getMessage() and "not vetted" in record.getMessage() for record in caplog.records)
    check = wait_until(lambda: binary_check(runtime), what="the nmap probe")
    assert not check.ok and f"has scripts this labrecon has not vetted: {UNVETTED}" in check.detail
    assert "-sV are refused" in check.detail
    refused = runtime.call("nmap", {"target": "10.0.0.5", "scan_type": "version"})
    assert refused.error_type is ErrorType.VALIDATION and UNVETTED in refused.error.message
    assert runtime.call("nmap", {"target": "10.0.0.5", "ports": "22", "scripts": ["banner"]}).ok
    (run,) = scan_calls(runtime.settings.tools.nmap.binary)
    assert "-sV" not in run["argv"] and run["env"]["NMAPDIR"] == str(data)

    config = tmp_path / "labrecon.toml"
    config.write_text(f'[tools.nmap]\nbinary = "{runtime.settings.tools.nmap.binary}"\ndatadir = "{data}"\n')
    main(["check", "--config", str(config), "--json"])
    report = json.loads(capsys.readouterr().out)["tools"]["nmap"]
    assert report["found"] and any(UNVETTED in problem for problem in report["problems"])
    main(["check", "--config", str(config)])
    assert f"WARNING  nmap (data in {data}) has scripts this labrecon has not vetted: {UNVETTED}" in (
        capsys.readouterr().out
    )
