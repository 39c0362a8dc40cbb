"""Tool specs through their public surface: schemas, argv building, prepare_call."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from actors.api import ToolInfo
from actors.flags import Duration, Grammar, Int
from actors.nmap_scripts import NMAP_SCRIPTS
from actors.policy import TargetPolicy
from actors.prepare import PreparedCall, prepare_call, resolve_timeout
from actors.results import CallOutcome, ErrorType, InvalidCall
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS
from actors.tools.gobuster import PACKAGED_WORDLISTS, GobusterSettings
from actors.tools.gobuster import grammar as gobuster_grammar
from actors.tools.masscan import MasscanSettings
from actors.tools.masscan import grammar as masscan_grammar
from actors.tools.nmap import NmapSettings
from actors.tools.nmap import grammar as nmap_grammar
from tests.fakes.install import FAKES_DIR

HOSTS = {"web.lab.internal": "10.0.0.7", "v6.lab.internal": "fd00:1::7"}
POLICY = TargetPolicy(PolicySettings(hosts=HOSTS, dns=False, allowed_networks=["10.0.0.0/8", "fd00:1::/64"]))
SETTINGS = {"nmap": NmapSettings(), "masscan": MasscanSettings(), "gobuster": GobusterSettings()}


def prepare(tool: str, settings=None, policy: TargetPolicy = POLICY, **arguments) -> PreparedCall:
    return prepare_call(TOOL_SPECS[tool], arguments, settings=settings or SETTINGS[tool], policy=policy)


def argv(tool: str, settings=None, **arguments) -> list[str]:
    return list(prepare(tool, settings, **arguments).argv)


def refusal(tool: str, settings=None, **arguments) -> InvalidCall:
    with pytest.raises(InvalidCall) as info:
        prepare(tool, settings, **arguments)
    return info.value


# ---------------------------------------------------------------- schemas


def test_the_three_tools_are_served():
    assert sorted(TOOL_SPECS) == ["gobuster", "masscan", "nmap"]
    assert all(spec.name == name for name, spec in TOOL_SPECS.items())


@pytest.mark.parametrize("name", sorted(TOOL_SPECS))
def test_input_schema_is_an_mcp_object_schema(name):
    schema = TOOL_SPECS[name].input_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert "target" in schema["required"]
    assert schema["properties"]["extra_args"]["anyOf"][0]["maxLength"] == 2048
    assert {"target", "extra_args", "timeout_sec"} <= set(schema["properties"])
    validator = Draft202012Validator(schema)
    assert not validator.is_valid({"extra_args": "-sV"})  # target missing
    assert not validator.is_valid({"target": "10.0.0.1", "bogus": 1})


def test_typed_fields_per_tool():
    props = {name: set(spec.input_schema()["properties"]) for name, spec in TOOL_SPECS.items()}
    assert {"ports", "scan_type", "top_ports", "timing", "scripts"} <= props["nmap"]
    assert {"ports", "rate", "banners"} <= props["masscan"]
    assert {"mode", "scheme", "port", "path", "wordlist", "extensions", "threads"} <= props["gobuster"]
    assert TOOL_SPECS["masscan"].input_schema()["required"] == ["target", "ports"]
    nmap = TOOL_SPECS["nmap"].input_schema()["properties"]
    assert nmap["scan_type"]["anyOf"][0]["enum"] == ["connect", "syn", "version", "ping", "udp"]
    assert nmap["timing"]["anyOf"][0]["maximum"] == 4


SAMPLE_DIR = Path(__file__).parent / "samples"
SAMPLES = {
    "nmap": (SAMPLE_DIR / "nmap_full.xml").read_bytes(),
    "masscan": (SAMPLE_DIR / "masscan_new.json").read_bytes(),
    "gobuster": (SAMPLE_DIR / "gobuster_dir.txt").read_bytes(),
}


def sample_outcome(name: str) -> CallOutcome:
    """A successful call whose result is the parse of that tool's real sample output."""
    return CallOutcome(
        tool=name,
        call_id="c1",
        ok=True,
        target="10.0.0.5",
        resolved_targets=["10.0.0.5"],
        argv=[name, "10.0.0.5"],
        returncode=0,
        result=TOOL_SPECS[name].parse(SAMPLES[name], truncated=False),
    )


@pytest.mark.parametrize("name", sorted(TOOL_SPECS))
def test_output_schema_describes_real_outcomes(name):
    spec = TOOL_SPECS[name]
    schema = spec.output_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    validator = Draft202012Validator(schema)
    ok = sample_outcome(name)
    cut = ok.model_copy(update={"result": spec.parse(SAMPLES[name][:200], truncated=True)})
    failed = CallOutcome.failure(name, "c2", ErrorType.VALIDATION, "bad target")
    for outcome in (ok, cut, failed):
        errors = list(validator.iter_errors(outcome.model_dump(mode="json")))
        assert errors == []
    broken = ok.model_dump(mode="json")
    broken["result"] = {"hosts": "nope", "findings": "nope"}
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("name", sorted(TOOL_SPECS))
def test_annotations_and_info(name):
    spec = TOOL_SPECS[name]
    assert spec.annotations == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": True,
    }
    info = spec.info()
    assert isinstance(info, ToolInfo)
    assert info.name == name and info.title == spec.title
    assert info.input_schema == spec.input_schema()
    assert len(spec.description) > 100
    assert spec.version_argv == (("version",) if name == "gobuster" else ("--version",))


# ---------------------------------------------------------------- prepare_call


def test_prepared_call_carries_binary_target_and_timeout():
    settings = NmapSettings(binary="/opt/nmap", datadir=str(FAKES_DIR), timeout_sec=60)
    call = prepare("nmap", settings=settings, target="web.lab.internal")
    assert call.tool == "nmap"
    assert call.target == "web.lab.internal"
    assert call.resolved_targets == ("10.0.0.7",)
    assert call.argv[0] == "/opt/nmap"
    assert call.argv[-1] == "10.0.0.7"
    assert call.timeout_sec == 60


def test_timeouts_default_and_cap():
    settings = NmapSettings(timeout_sec=30, max_timeout_sec=120)
    assert resolve_timeout(None, settings) == 30
    assert prepare("nmap", settings, target="10.0.0.1", timeout_sec=120).timeout_sec == 120
    err = refusal("nmap", settings, target="10.0.0.1", timeout_sec=121)
    assert err.field == "timeout_sec" and "120" in str(err)
    for bad in (0, -5, float("nan"), float("inf"), "soon"):
        assert refusal("nmap", settings, target="10.0.0.1", timeout_sec=bad).field == "timeout_sec"


@pytest.mark.parametrize(
    "arguments, field",
    [
        ({"target": "10.0.0.1", "bogus": True}, "bogus"),
        ({"target": 10}, "target"),
        ({}, "target"),
        ({"target": "10.0.0.1", "extra_args": "-sV " * 600}, "extra_args"),
        ({"target": "10.0.0.1", "scan_type": "stealth"}, "scan_type"),
        ({"target": "10.0.0.1", "timing": 5}, "timing"),
        ({"target": "10.0.0.1", "scripts": "default"}, "scripts"),
    ],
)
def test_argument_validation_errors_name_the_field(arguments, field):
    with pytest.raises(InvalidCall) as info:
        prepare_call(TOOL_SPECS["nmap"], arguments, settings=NmapSettings(), policy=POLICY)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("arguments", [None, [], "10.0.0.1", 42])
def test_arguments_must_be_an_object(arguments):
    with pytest.raises(InvalidCall):
        prepare_call(TOOL_SPECS["nmap"], arguments, settings=NmapSettings(), policy=POLICY)


def test_target_refusals_come_from_the_policy():
    assert refusal("nmap", target="8.8.8.8").field == "target"
    assert refusal("masscan", target="10.0.0.0/8", ports="80").field == "target"


# ---------------------------------------------------------------- argument types


@pytest.mark.parametrize(
    "tool, field, value",
    [
        ("nmap", "timeout_sec", "30"),
        ("nmap", "timeout_sec", True),
        ("nmap", "top_ports", True),
        ("nmap", "top_ports", "10"),
        ("nmap", "top_ports", 10.0),
        ("nmap", "timing", "4"),
        ("nmap", "timing", False),
        ("nmap", "extra_args", 5),
        ("masscan", "rate", "100"),
        ("masscan", "rate", True),
        ("masscan", "banners", "yes"),
        ("masscan", "banners", "true"),
        ("masscan", "banners", 1),
        ("gobuster", "port", "8080"),
        ("gobuster", "port", True),
        ("gobuster", "threads", "4"),
        ("gobuster", "threads", 4.0),
    ],
)
def test_values_of_another_json_type_are_refused_not_coerced(tool, field, value):
    arguments = {"target": "10.0.0.5", **({"ports": "80"} if tool == "masscan" else {}), field: value}
    err = refusal(tool, **arguments)
    assert err.field == field and field in str(err)


def test_strict_types_still_take_what_the_schema_allows():
    assert prepare("nmap", target="10.0.0.5", timeout_sec=30).timeout_sec == 30.0  # an integer is a number
    assert "--banners" in argv("masscan", target="10.0.0.5", ports="80", banners=True)
    assert argv("gobuster", target="10.0.0.5", port=8080, threads=4)[3] == "http://10.0.0.5:8080/"


@pytest.mark.parametrize(
    "ports, rendered",
    [
        (22, "22"),
        ("22,80,8000-8100", "22,80,8000-8100"),
        ("22, 80 , 443", "22,80,443"),
        ([22, 80], "22,80"),
        ([22, "80", "8000-8100"], "22,80,8000-8100"),
        (["22,80", 443], "22,80,443"),
        (["T:80", "U:53"], "T:80,U:53"),
        ([80, "080"], "80,80"),
    ],
)
def test_nmap_ports_come_as_a_string_a_number_or_a_list(ports, rendered):
    args = argv("nmap", target="10.0.0.5", ports=ports)
    assert args[args.index("-p") + 1] == rendered


def test_masscan_ports_come_as_a_string_a_number_or_a_list():
    for ports, rendered in ((80, "80"), ([80, "U:53"], "80,U:53"), ("80, 443", "80,443")):
        args = argv("masscan", target="10.0.0.5", ports=ports)
        assert args[args.index("--ports") + 1] == rendered


@pytest.mark.parametrize(
    "ports",
    [True, 0, 70000, -22, 22.0, [], [True], [22, None], [[22]], {"port": 22}, [22] * 513, "", "80 -iL x", ["-p80"]],
)
@pytest.mark.parametrize("tool", ["nmap", "masscan"])
def test_port_lists_of_any_other_shape_are_refused(tool, ports):
    assert refusal(tool, target="10.0.0.5", ports=ports).field == "ports"


@pytest.mark.parametrize("tool", ["nmap", "masscan"])
def test_the_ports_schema_admits_strings_numbers_and_lists(tool):
    schema = TOOL_SPECS[tool].input_schema()
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for ports in ("22,80", 22, [22, 80], [22, "8000-8100"]):
        assert validator.is_valid({"target": "10.0.0.5", "ports": ports}), ports
    for bad in (True, 0, 22.5, [], [True], {"port": 22}, [[22]]):
        assert not validator.is_valid({"target": "10.0.0.5", "ports": bad}), bad
    description = schema["properties"]["ports"]["description"]
    assert "a port number" in description and "a list" in description


# ---------------------------------------------------------------- numeric bounds

# Every numeric option of every grammar, with a value under its lower bound and one over its upper.
OUT_OF_BOUNDS = [
    ("nmap", "--host-timeout", ["0", "0s", "0ms", "1500ms", "2h"]),
    ("nmap", "--scan-delay", ["61s", "2m"]),
    ("nmap", "--max-retries", ["11"]),
    ("nmap", "--min-rate", ["0", "10001"]),
    ("nmap", "--max-rate", ["0", "10001"]),
    ("nmap", "--top-ports", ["0", "65536"]),
    ("nmap", "--version-intensity", ["10"]),
    ("nmap", "-T", ["5"]),
    ("masscan", "--rate", ["0", "1001"]),
    ("masscan", "--retries", ["6"]),
    ("masscan", "--wait", ["61", "forever"]),
    ("masscan", "--connection-timeout", ["0", "31"]),
    ("masscan", "--seed", ["4294967296"]),
    ("gobuster", "--timeout", ["0", "0s", "0ms", "999ms", "121s"]),
    ("gobuster", "--delay", ["11s", "1m"]),
    ("gobuster", "--retry-attempts", ["0", "11"]),
    ("gobuster", "-t", ["0", "11"]),
]


@pytest.mark.parametrize(
    "tool, option, value", [(tool, option, value) for tool, option, values in OUT_OF_BOUNDS for value in values]
)
def test_numeric_options_outside_their_bounds_are_refused(tool, option, value):
    settings = NmapSettings(max_timeout_sec=3600) if tool == "nmap" else None
    base = {"target": "10.0.0.5", **({"ports": "80"} if tool == "masscan" else {})}
    err = refusal(tool, settings, **base, extra_args=f"{option} {value}")
    assert err.field == "extra_args" and option in str(err)


def grammar_of(tool: str) -> Grammar:
    return {
        "nmap": nmap_grammar(NmapSettings()),
        "masscan": masscan_grammar(MasscanSettings()),
        "gobuster": gobuster_grammar(GobusterSettings(), "dir"),
    }[tool]


@pytest.mark.parametrize("tool", sorted(TOOL_SPECS))
def test_every_numeric_option_is_in_the_bounds_table(tool):
    """A numeric option added to a grammar must be added above, with the values that break it."""
    numeric = {o.name for o in grammar_of(tool).options if isinstance(o.value, (Int, Duration))}
    assert numeric == {option for name, option, _ in OUT_OF_BOUNDS if name == tool}


@pytest.mark.parametrize("tool", sorted(TOOL_SPECS))
def test_no_timeout_option_can_be_switched_off_with_zero(tool):
    timeouts = [o for o in grammar_of(tool).options if "timeout" in o.name]
    assert timeouts
    for option in timeouts:
        assert option.value is not None
        for zero in ("0", "0s", "0ms") if isinstance(option.value, Duration) else ("0",):
            with pytest.raises(ValueError):
                option.value.canonical(zero)


def test_numeric_options_at_their_bounds_are_accepted():
    nmap = argv("nmap", target="10.0.0.5", extra_args="--host-timeout 2s --scan-delay 0 --max-retries 0 --min-rate 1")
    assert nmap[6:14] == ["--host-timeout", "2s", "--scan-delay", "0s", "--max-retries", "0", "--min-rate", "1"]
    masscan = argv("masscan", target="10.0.0.5", ports="80", extra_args="--wait 0 --connection-timeout 1 --retries 0")
    assert masscan[5:11] == ["--wait", "0", "--connection-timeout", "1", "--retries", "0"]
    gobuster = argv("gobuster", target="10.0.0.5", extra_args="--timeout 1s --delay 0 --retry-attempts 1")
    assert gobuster[4:10] == ["--timeout", "1s", "--delay", "0s", "--retry-attempts", "1"]


# ---------------------------------------------------------------- nmap


def test_nmap_argv_shape():
    args = argv("nmap", target="10.0.0.5", ports="22,80", scan_type="connect", timing=4, extra_args="-Pn --open")
    assert args == [
        "nmap", "-oX", "-", "--stats-every", "2s", "-n", "-p", "22,80", "-sT", "-T4", "-Pn", "--open", "10.0.0.5"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "scan_type, flag", [("connect", "-sT"), ("syn", "-sS"), ("version", "-sV"), ("ping", "-sn"), ("udp", "-sU")]
)
def test_nmap_scan_types(scan_type, flag):
    assert flag in argv("nmap", target="10.0.0.5", scan_type=scan_type)


def test_nmap_scripts_become_one_list_of_vetted_script_names():
    args = argv("nmap", target="10.0.0.5", scripts=["banner", "default"], extra_args="-sC --script=http-title")
    assert args.count("--script") == 1
    names = args[args.index("--script") + 1].split(",")
    assert names[0] == "banner" and sorted(names) == sorted({"banner", *NMAP_SCRIPTS.members("default")})
    assert "default" not in names and "-sC" not in args


def test_nmap_scripts_outside_the_allowed_set_are_refused():
    settings = NmapSettings(allowed_scripts=("banner",))
    assert refusal("nmap", settings, target="10.0.0.5", scripts=["http-title"]).field == "scripts"
    assert refusal("nmap", settings, target="10.0.0.5", extra_args="-sC").field == "extra_args"
    assert argv("nmap", settings, target="10.0.0.5", extra_args="-script banner")[-2] == "banner"


def test_nmap_ipv6_targets_get_dash_6():
    args = argv("nmap", target="fd00:1::5")
    assert "-6" in args and args[-1] == "fd00:1::5"
    assert "-6" not in argv("nmap", target="10.0.0.5")
    assert "-6" in argv("nmap", target="v6.lab.internal")


def test_nmap_port_budget_covers_every_way_to_choose_ports():
    small = NmapSettings(max_ports=50)
    assert refusal("nmap", small, target="10.0.0.5", ports="1-51").field == "ports"
    assert refusal("nmap", small, target="10.0.0.5", top_ports=51).field == "top_ports"
    assert refusal("nmap", small, target="10.0.0.5", extra_args="-F").field == "extra_args"
    implicit = argv("nmap", small, target="10.0.0.5")
    assert implicit[-3:] == ["--top-ports", "50", "10.0.0.5"]
    assert "--top-ports" not in argv("nmap", small, target="10.0.0.5", scan_type="ping")
    assert "--top-ports" not in argv("nmap", target="10.0.0.5")


def test_nmap_rates_and_timeouts_are_bounded():
    assert refusal("nmap", target="10.0.0.5", extra_args="--max-rate 100000").field == "extra_args"
    args = argv("nmap", target="10.0.0.5", extra_args="--max-rate=500 --host-timeout 5m")
    assert args[6:10] == ["--max-rate", "500", "--host-timeout", "5m"]
    assert "-T5" in str(refusal("nmap", target="10.0.0.5", extra_args="-T5"))


def test_nmap_typed_field_and_same_option_in_extra_args_conflict():
    err = refusal("nmap", target="10.0.0.5", ports="80", extra_args="-p 443")
    assert "ports and extra_args" in str(err)


# ---------------------------------------------------------------- masscan


def test_masscan_argv_shape():
    args = argv("masscan", target="10.0.0.0/28", ports="80,443", rate=500, banners=True, extra_args="--wait 2")
    assert args == [
        "masscan", "--range", "10.0.0.0/28", "--ports", "80,443", "--rate", "500", "--banners", "--wait", "2",
        "--output-format", "json", "--output-filename", "-",
    ]  # fmt: skip


def test_masscan_rate_defaults_and_cap():
    assert argv("masscan", target="10.0.0.5", ports="80")[5:7] == ["--rate", "100"]
    low = MasscanSettings(max_rate=20)
    assert argv("masscan", low, target="10.0.0.5", ports="80")[5:7] == ["--rate", "20"]
    assert refusal("masscan", target="10.0.0.5", ports="80", rate=1001).field == "rate"
    assert refusal("masscan", target="10.0.0.5", ports="80", extra_args="--rate 5000").field == "extra_args"
    assert refusal("masscan", target="10.0.0.5", ports="80", extra_args="--max-rate 10").field == "extra_args"


def test_masscan_needs_ports():
    assert refusal("masscan", target="10.0.0.5").field == "ports"


# ---------------------------------------------------------------- gobuster


def test_gobuster_dir_argv_shape():
    args = argv("gobuster", target="10.0.0.5", extensions=[".php", "html"], threads=4, path="/app/")
    assert args == [
        "gobuster", "dir", "-u", "http://10.0.0.5/app/", "-t", "4", "-x", "php,html",
        "-w", str(PACKAGED_WORDLISTS / "common.txt"), "-q", "--no-color", "-z",
    ]  # fmt: skip


def test_gobuster_hostname_goes_to_the_host_header_and_the_ip_to_the_url():
    args = argv("gobuster", target="web.lab.internal", scheme="https", port=8443)
    assert args[args.index("-u") + 1] == "https://10.0.0.7:8443/"
    assert args[args.index("-H") + 1] == "Host: web.lab.internal:8443"
    plain = argv("gobuster", target="web.lab.internal", scheme="https", port=443)
    assert plain[plain.index("-H") + 1] == "Host: web.lab.internal"
    assert "-H" not in argv("gobuster", target="10.0.0.7")


def test_gobuster_ipv6_url_is_bracketed():
    args = argv("gobuster", target="fd00:1::5", port=8080)
    assert args[args.index("-u") + 1] == "http://[fd00:1::5]:8080/"


def test_gobuster_vhost_mode_uses_the_name_as_domain():
    args = argv("gobuster", target="web.lab.internal", mode="vhost")
    assert args[1] == "vhost"
    assert args[args.index("--domain") + 1] == "web.lab.internal"
    assert "--append-domain" in args and "-H" not in args
    own = argv("gobuster", target="web.lab.internal", mode="vhost", extra_args="--append-domain")
    assert own.count("--append-domain") == 1 and own.count("--domain") == 1
    plain = argv("gobuster", target="10.0.0.7", mode="vhost")
    assert "--domain" not in plain and "--append-domain" not in plain
    assert refusal("gobuster", target="10.0.0.7", mode="vhost", extensions=["php"]).field == "extensions"
    assert refusal("gobuster", target="10.0.0.7", mode="vhost", extra_args="-x php").field == "extra_args"


@pytest.mark.parametrize("target", ["web.lab.internal", "10.0.0.7"])
@pytest.mark.parametrize("extra_args", ["--domain evil.com", "--domain=evil.com", "--domain lab.internal"])
def test_gobuster_vhost_domain_is_never_the_callers(target, extra_args):
    err = refusal("gobuster", target=target, mode="vhost", extra_args=extra_args)
    assert err.field == "extra_args"
    assert "--domain is not allowed: the vhost domain comes from the target" in str(err)


def test_gobuster_vhost_appends_a_domain_only_when_the_target_names_one():
    err = refusal("gobuster", target="10.0.0.7", mode="vhost", extra_args="--append-domain")
    assert err.field == "extra_args" and "needs a hostname target" in str(err)


def test_gobuster_status_codes_empty_the_default_blacklist():
    args = argv("gobuster", target="10.0.0.5", extra_args="-s 200,301-302")
    assert "--status-codes-blacklist=" in args
    both = argv("gobuster", target="10.0.0.5", extra_args="-s 200 -b 500")
    assert "--status-codes-blacklist=" not in both


def test_gobuster_wordlists_and_threads(tmp_path):
    (tmp_path / "tiny.txt").write_text("a\n")
    settings = GobusterSettings(wordlist_dir=tmp_path, max_threads=5)
    args = argv("gobuster", settings, target="10.0.0.5", wordlist="tiny")
    assert args[args.index("-w") + 1] == str(tmp_path.resolve() / "tiny.txt")
    assert args[args.index("-t") + 1] == "5"
    assert refusal("gobuster", settings, target="10.0.0.5").field == "wordlist"  # no common.txt there
    assert refusal("gobuster", settings, target="10.0.0.5", wordlist="tiny", threads=6).field == "threads"
    assert refusal("gobuster", target="10.0.0.5", wordlist="../../etc/passwd").field == "wordlist"


def test_gobuster_refuses_networks_and_odd_paths():
    assert refusal("gobuster", target="10.0.0.0/30").field == "target"
    for path in ("admin", "/../etc", "//evil", "/a?b=1", "/a#x", "/a b"):
        assert refusal("gobuster", target="10.0.0.5", path=path).field == "path"


def test_packaged_wordlist_is_small_and_plain():
    words = (PACKAGED_WORDLISTS / "common.txt").read_text().split()
    assert 50 <= len(words) <= 200
    assert len(set(words)) == len(words)
    assert all(not w.startswith(("-", "/")) and ".." not in w for w in words)
