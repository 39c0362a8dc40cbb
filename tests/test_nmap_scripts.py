"""nmap runs vetted NSE scripts only, named one by one: the data, the grammar, the embedding API.

The installed nmap is only asked `--script-help` (it loads scripts and prints
their documentation; nothing is scanned or resolved) and its script.db is read.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.nmap_scripts import NMAP_SCRIPTS, read_script_db
from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.results import ErrorType, InvalidCall
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS
from actors.tools.nmap import DEFAULT_ALLOWED_SCRIPTS, NmapSettings
from tests.runtimes import scan_calls

POLICY = TargetPolicy(PolicySettings(dns=False))
OFFERED = ("auth", "default", "discovery", "safe", "version")
# Named in the issue that led to the vetted list: each reaches beyond the target.
REACHING_OUT = (
    "ftp-bounce", "fcrdns", "asn-query", "dns-recursion", "broadcast-dns-service-discovery",
    "targets-traceroute", "whois-ip", "ip-geolocation-maxmind", "dns-srv-enum", "http-open-proxy",
)  # fmt: skip


def prepare(arguments: dict, settings: NmapSettings | None = None):
    return prepare_call(
        TOOL_SPECS["nmap"], {"target": "10.0.0.5", **arguments}, settings=settings or NmapSettings(), policy=POLICY
    )


def refusal(arguments: dict, settings: NmapSettings | None = None) -> InvalidCall:
    with pytest.raises(InvalidCall) as info:
        prepare(arguments, settings)
    return info.value


def script_names(argv) -> list[str]:
    """The scripts an argv names; asserts there is one plain, comma-separated --script list."""
    argv = list(argv)
    assert argv.count("--script") == 1, argv
    value = argv[argv.index("--script") + 1]
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*(,[a-z0-9][a-z0-9._-]*)*", value), value
    return value.split(",")


# ---------------------------------------------------------------- the installed nmap's script.db


def installed_script_db() -> Path | None:
    """The script.db of the nmap on PATH, found as labrecon finds it for a run."""
    directory = NmapSettings().data.directory if shutil.which("nmap") else None
    return Path(directory) / "scripts" / "script.db" if directory is not None else None


@pytest.fixture(scope="module")
def script_db() -> dict[str, frozenset[str]]:
    path = installed_script_db()
    if path is None:
        pytest.skip("nmap is not installed, so there is no script.db to check the vetted list against")
    return read_script_db(path)


def test_every_installed_script_is_either_vetted_or_denied(script_db):
    neither = sorted(
        name for name in script_db if name not in NMAP_SCRIPTS.vetted and NMAP_SCRIPTS.why_denied(name) is None
    )
    both = sorted(
        name for name in script_db if name in NMAP_SCRIPTS.vetted and NMAP_SCRIPTS.why_denied(name) is not None
    )
    assert neither == [], f"vet or deny these scripts in actors/nmap_scripts.toml: {neither}"
    assert both == []


def test_vetted_scripts_exist_with_the_categories_nmap_gives_them(script_db):
    """A category expands to what nmap itself files there, and nmap knows every name it is given."""
    differ = {name: sorted(cats) for name, cats in NMAP_SCRIPTS.vetted.items() if script_db.get(name) != cats}
    assert differ == {}


def test_every_version_script_nmap_runs_for_dash_sV_is_vetted(script_db):
    unvetted = sorted(name for name, cats in script_db.items() if "version" in cats and name not in NMAP_SCRIPTS.vetted)
    assert unvetted == []


# nmap libraries that take a script beyond the host it was given: httpspider follows links to other hosts
# (its same-host check compares only the port off ports 80 and 443), anyconnect follows redirects anywhere.
LIBRARIES_THAT_LEAVE_THE_TARGET = ("httpspider", "anyconnect")


def test_no_vetted_script_loads_a_library_that_leaves_the_target(script_db):
    scripts = installed_script_db().parent  # type: ignore[union-attr]  # script_db skipped without nmap
    loading = {
        name: library
        for name in NMAP_SCRIPTS.vetted
        for library in LIBRARIES_THAT_LEAVE_THE_TARGET
        if re.search(rf"""require\s*\(?\s*["']{library}["']""", (scripts / f"{name}.nse").read_text(errors="replace"))
    }
    assert loading == {}


def test_no_vetted_script_carries_a_denied_category_but_wdb_version():
    """wdb-version is filed under vuln too, and -sV runs it whatever the call says: it was read and only reads."""
    carrying = {
        name: sorted(cats & NMAP_SCRIPTS.denied_categories.keys()) for name, cats in NMAP_SCRIPTS.vetted.items()
    }
    assert {name: cats for name, cats in carrying.items() if cats} == {"wdb-version": ["vuln"]}


def test_the_scripts_that_reach_beyond_the_target_are_denied():
    for name in REACHING_OUT:
        assert name not in NMAP_SCRIPTS.vetted
        assert NMAP_SCRIPTS.why_denied(name), name


# ---------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"scripts": ["default"]}, id="scripts-default"),
        pytest.param({"extra_args": "-sC"}, id="extra-sC"),
        pytest.param({"extra_args": "--script default"}, id="extra-script-default"),
        pytest.param({"extra_args": "-script=DEFAULT"}, id="single-dash-upper-case"),
    ],
)
def test_default_and_dash_sC_become_the_vetted_default_scripts_by_name(arguments):
    names = script_names(prepare(arguments).argv)
    assert names == list(NMAP_SCRIPTS.members("default"))
    assert "ftp-bounce" not in names and "jdwp-info" not in names and "-sC" not in prepare(arguments).argv


@pytest.mark.parametrize("category", OFFERED)
def test_a_category_is_never_in_the_argv_only_its_vetted_members(category):
    names = script_names(prepare({"scripts": [category]}).argv)
    assert names == list(NMAP_SCRIPTS.members(category)) and names
    assert set(names) <= NMAP_SCRIPTS.vetted.keys()
    assert not set(names) & (NMAP_SCRIPTS.categories | NMAP_SCRIPTS.denied_categories.keys())


def test_names_and_categories_together_name_each_script_once_in_the_order_asked():
    names = script_names(prepare({"scripts": ["banner", "http-title"], "extra_args": "-sC --script=banner,auth"}).argv)
    assert names[:2] == ["banner", "http-title"]
    assert len(names) == len(set(names))
    assert set(names) == {"banner", *NMAP_SCRIPTS.members("default"), *NMAP_SCRIPTS.members("auth")}


@pytest.mark.parametrize(
    "name, why",
    [
        ("ftp-bounce", "FTP server to connect to a third host"),
        ("fcrdns", "DNS queries"),
        ("dns-recursion", "resolve www.wikipedia.org"),
        ("broadcast-dhcp-discover", "broadcasts"),
        ("asn-query", "DNS services on the internet"),
        ("jdwp-info", "runs a Java class"),
        ("http-brute", "guesses credentials"),
    ],
)
def test_a_denied_script_is_refused_with_the_reason(name, why):
    for arguments, field in (({"scripts": [name]}, "scripts"), ({"extra_args": f"--script {name}"}, "extra_args")):
        error = refusal(arguments)
        assert error.field == field
        assert f"'{name}' is never run" in str(error) and why in str(error), str(error)


@pytest.mark.parametrize("category", ["intrusive", "external", "broadcast", "vuln", "exploit", "all"])
def test_a_denied_category_is_refused_with_the_reason(category):
    assert f"the '{category}' category is never run" in str(refusal({"scripts": [category]}))


@pytest.mark.parametrize("word", ["no-such-script", "http-*", "default or intrusive", "./evil.nse", "+banner"])
def test_unvetted_names_patterns_and_expressions_are_refused(word):
    assert refusal({"scripts": [word]}).field == "scripts"


def test_the_default_configuration_admits_only_vetted_scripts():
    assert NmapSettings(allowed_scripts=DEFAULT_ALLOWED_SCRIPTS).allowed_scripts == DEFAULT_ALLOWED_SCRIPTS
    assert NMAP_SCRIPTS.admitted(DEFAULT_ALLOWED_SCRIPTS) <= NMAP_SCRIPTS.vetted.keys()


@pytest.mark.parametrize(
    "word, why",
    [("ftp-bounce", "third host"), ("exploit", "category is never run"), ("all", "every script"),
     ("no-such-script", "not a vetted")],
)  # fmt: skip
def test_configuration_can_never_admit_a_denied_or_unvetted_script(word, why):
    with pytest.raises(ValidationError, match=why):
        NmapSettings(allowed_scripts=("banner", word))


def test_configuration_narrows_by_name_or_category():
    narrow = NmapSettings(allowed_scripts=(" Banner", "discovery"))
    assert narrow.allowed_scripts == ("banner", "discovery")
    assert script_names(prepare({"scripts": ["banner", "http-title"]}, narrow).argv) == ["banner", "http-title"]
    assert "not allowed here" in str(
        refusal({"scripts": ["default"]}, narrow)
    )  # address-info is default, not discovery
    assert "not allowed here" in str(refusal({"scripts": ["x11-access"]}, narrow))
    assert refusal({"extra_args": "-sC"}, narrow).field == "extra_args"


def test_version_detection_needs_every_version_script_admitted():
    assert "-sV" in prepare({"scan_type": "version"}).argv
    assert (
        "-sV" in prepare({"scan_type": "version"}, NmapSettings(allowed_scripts=NMAP_SCRIPTS.members("version"))).argv
    )
    for narrow in (("banner",), ("default", "safe", "discovery")):
        assert refusal({"scan_type": "version"}, NmapSettings(allowed_scripts=narrow)).field == "scan_type"


# ---------------------------------------------------------------- the real nmap reads the argv as meant


@pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the real nmap (only --script-help, no scan)")
@pytest.mark.parametrize("arguments", [{"extra_args": "-sC"}, {"scripts": ["discovery"]}], ids=["sC", "discovery"])
def test_real_nmap_selects_exactly_the_named_scripts(arguments, tmp_path):
    names = script_names(prepare(arguments).argv)
    helped = subprocess.run(
        ["nmap", "--script-help", ",".join(names)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    lines = helped.stdout.splitlines()
    selected = {lines[i - 1].strip() for i, line in enumerate(lines) if line.startswith("Categories:")}
    assert selected == set(names)


# ---------------------------------------------------------------- through the embedding API


def test_runtime_runs_default_scripts_by_name_and_refuses_ftp_bounce_before_any_process(make_runtime):
    runtime = make_runtime()
    binary = runtime.settings.tools.nmap.binary
    refused = runtime.call("nmap", {"target": "10.0.0.5", "scripts": ["default", "ftp-bounce"]})
    assert refused.error_type is ErrorType.VALIDATION
    assert "'ftp-bounce' is never run" in refused.error.message and "third host" in refused.error.message
    assert scan_calls(binary) == []
    outcome = runtime.call("nmap", {"target": "10.0.0.5", "ports": "21,80", "extra_args": "-sC"})
    assert outcome.ok, outcome.error
    (run,) = scan_calls(binary)
    assert script_names(run["argv"]) == list(NMAP_SCRIPTS.members("default"))
    assert "-sC" not in run["argv"] and "ftp-bounce" not in ",".join(run["argv"])
