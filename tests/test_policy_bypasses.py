"""What *allowed* nmap options would make nmap do on its own, beyond observing.

The grammar and the target policy let no undeclared option, file path or
unchecked address through; these cases are about nmap's own behaviour with
options it is allowed to get, checked against how nmap 7.93 reads its argv
(nse_main.lua, nselib/http.lua, scripts/script.db):

F1  scripts=default|safe|discovery, or -sC, would select `jdwp-info`, which
    injects and runs a Java class on the target. It is not vetted, so no
    category stands for it and the argv never names it.
F2  -sV / scan_type='version' makes nmap add its own `version` script rule
    (nse_main.lua check_rules), beside our --script list, so every version
    script runs (`wdb-version`, category vuln, among them). All of them are
    vetted, and -sV is refused unless the configuration admits them all.
F3  without -n nmap does reverse DNS itself, and NSE's http library follows
    redirects to hosts in the reverse-DNS name's domain, resolving them
    itself, to addresses nobody checked. -n is always rendered.

F1 and F3 are handled in the argv rather than by refusal, so those tests
accept either a refusal or an argv without the problem.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.results import InvalidCall
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS
from actors.tools.nmap import NmapSettings

POLICY = TargetPolicy(PolicySettings(hosts={"web.lab.internal": "10.0.0.7"}, dns=False, max_hosts=256))
NMAP = TOOL_SPECS["nmap"]
DEFAULT_SETTINGS = NmapSettings()  # allows default, safe, discovery, version, ...


def prepare(arguments: dict, settings: NmapSettings = DEFAULT_SETTINGS):
    return prepare_call(NMAP, {"target": "10.0.0.5", **arguments}, settings=settings, policy=POLICY)


def script_selection(argv: tuple[str, ...]) -> str:
    assert "--script" in argv, argv
    return argv[argv.index("--script") + 1]


def test_baseline_nmap_call_is_accepted():
    """Keeps the cases below honest: they fail for their finding, not for setup."""
    assert prepare({"scripts": ["default"]}).argv[-1] == "10.0.0.5"


# ---------------------------------------------------------------- F1: jdwp-info

JDWP_CASES = [
    pytest.param({"scripts": ["default"]}, id="scripts-default"),
    pytest.param({"scripts": ["safe"]}, id="scripts-safe"),
    pytest.param({"scripts": ["discovery"]}, id="scripts-discovery"),
    pytest.param({"extra_args": "-sC"}, id="extra-sC"),
    pytest.param({"extra_args": "--script default"}, id="extra-script-default"),
]


@pytest.mark.parametrize("arguments", JDWP_CASES)
def test_allowed_script_selection_never_selects_jdwp_info(arguments):
    """jdwp-info (categories default, safe, discovery) executes code on the target JVM."""
    try:
        call = prepare(arguments)
    except InvalidCall:
        return
    names = script_selection(call.argv).split(",")
    assert "jdwp-info" not in names, "jdwp-info injects and runs a Java class on the target"


@pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the real nmap (only --script-help, no scan)")
@pytest.mark.parametrize("arguments", JDWP_CASES)
def test_real_nmap_does_not_select_jdwp_info(arguments):
    try:
        call = prepare(arguments)
    except InvalidCall:
        return
    helped = subprocess.run(
        ["nmap", "--script-help", script_selection(call.argv)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    selected = {line.strip() for line in helped.stdout.splitlines()}
    assert "jdwp-info" not in selected


# ---------------------------------------------------------------- F2: -sV adds nmap's own 'version' rule


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"scan_type": "version"}, id="scan_type-version"),
        pytest.param({"extra_args": "-sV"}, id="extra-sV"),
        pytest.param({"scan_type": "version", "scripts": ["banner"]}, id="scan_type-version-with-banner"),
    ],
)
def test_version_detection_is_refused_when_version_scripts_are_not_allowed(arguments):
    """nmap -sV runs every 'version' script (wdb-version is also 'vuln') beside our --script list."""
    restricted = NmapSettings(allowed_scripts=("banner",))
    with pytest.raises(InvalidCall):
        prepare(arguments, restricted)


# ---------------------------------------------------------------- F3: nmap's own name resolution


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({}, id="plain"),
        pytest.param({"scripts": ["http-title"]}, id="http-title"),
        pytest.param({"extra_args": "-sC"}, id="sC"),
        pytest.param({"target": "web.lab.internal", "scripts": ["default"]}, id="hostname-target"),
        pytest.param({"target": "10.0.0.0/28", "scan_type": "ping"}, id="cidr-ping"),
    ],
)
def test_nmap_never_resolves_names_itself(arguments):
    """Without -n, http.lua follows redirects to names in the target's rDNS domain and resolves them itself."""
    try:
        call = prepare(arguments)
    except InvalidCall:
        return
    assert "-n" in call.argv, f"{call.argv} lets nmap do reverse DNS and resolve redirect host names itself"
