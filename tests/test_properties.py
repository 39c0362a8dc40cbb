"""Properties that must hold for every input, not just the ones we thought of."""

from __future__ import annotations

import ipaddress
import itertools
import re
import shlex
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from actors.flags import Choice, Duration, FileInDirectory, Grammar, Int, NameList, Option, PortList, render
from actors.nmap_scripts import NMAP_SCRIPTS
from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.results import CallOutcome, InvalidCall
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS, gobuster, masscan, nmap
from actors.tools.gobuster import GobusterSettings
from actors.tools.masscan import MasscanSettings
from actors.tools.nmap import NmapSettings

PROPERTY = settings(max_examples=300, deadline=None)

# ---------------------------------------------------------------- targets

NETWORKS = st.builds(
    lambda base, prefix: ipaddress.IPv4Network((base, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
POLICY_SETTINGS = st.builds(
    lambda nets, cap, domains: PolicySettings(
        allowed_networks=tuple(nets),
        max_hosts=cap,
        allowed_domains=tuple(domains),
        hosts={"a.lab.internal": nets[0].network_address, "b.lab.internal": "8.8.8.8", "c.evil.test": "10.0.0.2"},
        dns=False,
    ),
    st.lists(NETWORKS, min_size=1, max_size=3),
    st.integers(1, 4096),
    st.lists(st.sampled_from(["lab.internal", "internal", "evil.test", "test"]), min_size=1, max_size=2),
)


def octet_forms(value: int) -> st.SearchStrategy[str]:
    return st.sampled_from([str(value), f"0{value:o}", f"0x{value:x}", f"{value:03d}", f"0{value}"])


ADDRESS_TEXT = st.one_of(
    # canonical and non-canonical spellings of random addresses
    st.integers(0, 2**32 - 1).flatmap(
        lambda n: st.tuples(*(octet_forms((n >> s) & 0xFF) for s in (24, 16, 8, 0))).map(".".join)
    ),
    st.integers(0, 2**32 - 1).map(str),
    st.integers(0, 2**32 - 1).map(lambda n: f"{n >> 24}.{n & 0xFFFFFF}"),
    st.builds(lambda n, p: f"{ipaddress.IPv4Address(n)}/{p}", st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda n, a, b: f"{ipaddress.IPv4Address(n)}{a}{b}", st.integers(0, 2**32 - 1),
              st.sampled_from(["-", ",", "*", " ", ":", "/", "\n"]), st.sampled_from(["", "5", "10.0.0.9", "*"])),
    st.sampled_from(["a.lab.internal", "b.lab.internal", "c.evil.test", "A.LAB.INTERNAL.", "xlab.internal"]),
    st.text(max_size=40),
)  # fmt: skip


def near_allowed(policy_settings: PolicySettings) -> st.SearchStrategy[str]:
    """Targets in, around and overlapping the allowed networks, in many spellings."""
    network = st.sampled_from(policy_settings.allowed_networks)
    inside = network.flatmap(lambda n: st.integers(int(n.network_address), int(n.broadcast_address)))
    return st.one_of(
        inside.map(lambda a: str(ipaddress.IPv4Address(a))),
        inside.flatmap(
            lambda a: st.tuples(*(octet_forms((a >> s) & 0xFF) for s in (24, 16, 8, 0))).map(".".join)
        ),
        network.flatmap(lambda n: st.tuples(st.just(n), st.integers(n.prefixlen, 32))).map(
            lambda np: str(next(np[0].subnets(new_prefix=np[1])))
        ),
        st.tuples(inside, st.integers(0, 32)).map(lambda ap: f"{ipaddress.IPv4Address(ap[0])}/{ap[1]}"),
        inside.map(lambda a: str(ipaddress.IPv4Address(min(a + 2**12, 2**32 - 1)))),
        ADDRESS_TEXT,
    )


@PROPERTY
@given(st.data())
@example(data=None)
def test_accepted_targets_are_inside_the_allowlist_and_under_the_cap(data):
    if data is None:  # a fixed case: the default policy and a plain /24
        policy_settings, target = PolicySettings(dns=False), "10.0.0.0/24"
    else:
        policy_settings = data.draw(POLICY_SETTINGS)
        target = data.draw(near_allowed(policy_settings))
    policy = TargetPolicy(policy_settings)
    try:
        resolved = policy.check(target)
    except InvalidCall as exc:
        assert exc.field == "target"
        event("refused")
        return
    event(f"accepted {resolved.kind}")
    networks = policy_settings.allowed_networks
    if resolved.kind == "cidr":
        assert resolved.network is not None
        assert any(resolved.network[0] in n and resolved.network[-1] in n for n in networks)
        assert resolved.host_count == resolved.network.num_addresses <= policy_settings.max_hosts
        assert resolved.tool_target == str(resolved.network) == target
    else:
        assert resolved.addresses
        assert all(any(a in n for n in networks) for a in resolved.addresses)
        assert resolved.tool_target == str(resolved.addresses[0])
        assert resolved.host_count == 1
    if resolved.kind == "ip":
        assert target == resolved.tool_target  # only the canonical spelling is accepted
    if resolved.kind == "host":
        assert resolved.hostname is not None
        assert any(
            resolved.hostname == d or resolved.hostname.endswith("." + d) for d in policy_settings.allowed_domains
        )


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.data())
def test_an_address_is_accepted_only_in_its_canonical_spelling(number, data):
    octets = [(number >> s) & 0xFF for s in (24, 16, 8, 0)]
    spelled = ".".join(data.draw(octet_forms(o)) for o in octets)
    policy = TargetPolicy(PolicySettings(allowed_networks=("0.0.0.0/0",), dns=False))
    canonical = str(ipaddress.IPv4Address(number))
    try:
        accepted = policy.check(spelled).tool_target
    except InvalidCall:
        assert spelled != canonical
    else:
        assert spelled == canonical == accepted


# ---------------------------------------------------------------- argv

NMAP_SETTINGS = NmapSettings(allowed_scripts=("default", "banner", "http-title", "safe"), max_ports=2000)
SETTINGS = {
    "nmap": NMAP_SETTINGS,
    "masscan": MasscanSettings(max_rate=500),
    "gobuster": GobusterSettings(max_threads=8),
}
POLICY = TargetPolicy(
    PolicySettings(
        allowed_networks=("10.0.0.0/8", "fd00:1::/64"),
        hosts={"web.lab.internal": "10.0.0.7", "v6.lab.internal": "fd00:1::7"},
        dns=False,
        max_hosts=64,
    )
)


def grammar_for(tool: str, mode: str = "dir") -> Grammar:
    if tool == "nmap":
        return nmap.grammar(SETTINGS["nmap"])
    if tool == "masscan":
        return masscan.grammar(SETTINGS["masscan"])
    return gobuster.grammar(SETTINGS["gobuster"], mode)


OPTION_WORDS = sorted(
    {name for tool in ("nmap", "masscan") for name in grammar_for(tool).names}
    | gobuster.grammar(SETTINGS["gobuster"], "dir").names
    | gobuster.grammar(SETTINGS["gobuster"], "vhost").names
    | set(nmap.FORBIDDEN) | set(masscan.FORBIDDEN) | set(gobuster.FORBIDDEN)
    | {"--scr", "--top", "-script", "-top-ports", "-open", "--", "-", "-p-", "-T5", "-oX", "-sC"}
)  # fmt: skip
VALUE_WORDS = [
    "80", "22,80,443", "1-1024", "T:80,U:53", "U:53", "0", "65536", "1-70000", "-", "-1", "4", "5", "9", "100",
    "5000", "100000", "30", "5m", "500ms", "999h", "banner", "default", "http-title", "http-brute", "vuln",
    "safe,banner", "common.txt", "common", "../common.txt", "/etc/passwd", "GET", "POST", "php,html", "200,301",
    "404", "lab.internal", "10.0.0.5", "8.8.8.8", "fd00:1::5", "x", "", "$(id)", ";", "a b",
]  # fmt: skip
TOKENS = st.one_of(
    st.sampled_from(OPTION_WORDS),
    st.sampled_from(VALUE_WORDS),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(OPTION_WORDS), st.sampled_from(VALUE_WORDS)),
    st.builds(
        lambda o, v: o + v, st.sampled_from([w for w in OPTION_WORDS if len(w) == 2]), st.sampled_from(VALUE_WORDS)
    ),
)


def values_for(option: Option) -> st.SearchStrategy[str]:
    """Mostly valid values for an option's kind, with some just out of bounds."""
    kind = option.value
    if isinstance(kind, Int):
        return st.integers(kind.lo - 1, min(kind.hi, 10**6) + 1).map(str)
    if isinstance(kind, PortList):
        return st.sampled_from(["80", "22,80,443", "1-1024", "U:53", "T:80,U:53", "0", "1-70000", "http"])
    if isinstance(kind, Duration):
        return st.sampled_from(["30", "5m", "500ms", "1h", "999h", "10x", "0", "0s", "0ms"])
    if isinstance(kind, NameList):
        return st.sampled_from(["banner", "default", "safe,banner", "http-title", "http-brute", "vuln", "http-*"])
    if isinstance(kind, FileInDirectory):
        return st.sampled_from(["common.txt", "common", "../common.txt", "/etc/passwd"])
    if isinstance(kind, Choice):
        return st.sampled_from([*kind.choices, "POST"])
    return st.sampled_from(["php,html", "200,301-302", "404", "0,1234", "lab.internal", "x y", *VALUE_WORDS])


def well_formed(tool: str, mode: str = "dir") -> st.SearchStrategy[list[str]]:
    """Option sequences in every spelling the grammar reads, with plausible values."""
    grammar = grammar_for(tool, mode)

    def spell(name: str) -> st.SearchStrategy[list[str]]:
        option = grammar.option(name)
        if option.value is None:
            return st.just([name])
        forms = [lambda v: [name, v]]
        if name.startswith("--"):
            forms.append(lambda v: [f"{name}={v}"])
            if tool == "nmap":
                forms.append(lambda v: [name[1:], v])
        else:
            forms.append(lambda v: [name + v])
        return st.tuples(st.sampled_from(forms), values_for(option)).map(lambda fv: fv[0](fv[1]))

    names = st.lists(st.sampled_from(sorted(grammar.names)), max_size=4, unique_by=lambda n: grammar.option(n).name)
    spelled = names.flatmap(lambda ns: st.tuples(*(spell(n) for n in ns)))
    return spelled.map(lambda parts: list(itertools.chain.from_iterable(parts)))


def extra_args(tool: str) -> st.SearchStrategy[str | None]:
    tokens = st.one_of(well_formed(tool), st.lists(TOKENS, max_size=8))
    return st.one_of(st.none(), tokens.map(lambda ts: " ".join(shlex.quote(t) for t in ts)))


TARGETS = st.sampled_from(["10.0.0.5", "10.0.0.0/28", "web.lab.internal", "fd00:1::5", "v6.lab.internal", "8.8.8.8"])
MAYBE_VALUE = lambda s: st.one_of(st.none(), s)  # noqa: E731
# Port lists as clients send them: strings, numbers, and lists of both.
PORTS = st.one_of(
    st.sampled_from(["80", "1-1024", "U:53,80", "22, 80", *VALUE_WORDS]),
    st.integers(-1, 70000),
    st.lists(st.one_of(st.integers(0, 70000), st.sampled_from(["80", "8000-8100", "U:53", "-p", ""])), max_size=3),
)

ARGUMENTS = {
    "nmap": st.fixed_dictionaries(
        {"target": TARGETS, "extra_args": extra_args("nmap")},
        optional={
            "ports": MAYBE_VALUE(PORTS),
            "scan_type": MAYBE_VALUE(st.sampled_from(["connect", "syn", "version", "ping", "udp"])),
            "top_ports": MAYBE_VALUE(st.integers(1, 3000)),
            "timing": MAYBE_VALUE(st.integers(0, 4)),
            "scripts": MAYBE_VALUE(st.lists(st.sampled_from(VALUE_WORDS), max_size=3)),
        },
    ),
    "masscan": st.fixed_dictionaries(
        {"target": TARGETS, "ports": PORTS, "extra_args": extra_args("masscan")},
        optional={"rate": MAYBE_VALUE(st.integers(1, 1000)), "banners": st.booleans()},
    ),
    "gobuster": st.fixed_dictionaries(
        {"target": TARGETS, "extra_args": extra_args("gobuster")},
        optional={
            "mode": st.sampled_from(["dir", "vhost"]),
            "scheme": st.sampled_from(["http", "https"]),
            "port": MAYBE_VALUE(st.integers(1, 65535)),
            "path": st.sampled_from(["/", "/app/", "/a/b"]),
            "wordlist": MAYBE_VALUE(st.sampled_from(VALUE_WORDS)),
            "extensions": MAYBE_VALUE(st.lists(st.sampled_from(["php", ".html", "../x", "-x"]), max_size=2)),
            "threads": MAYBE_VALUE(st.integers(1, 10)),
        },
    ),
}

# Options labrecon itself adds, with the number of values each takes.
FIXED = {
    "nmap": {"-oX": 1, "--stats-every": 1, "-6": 0},
    "masscan": {"--range": 1, "--output-format": 1, "--output-filename": 1},
    "gobuster": {"-u": 1, "-H": 1, "--domain": 1, "--status-codes-blacklist=": 0, "-q": 0, "--no-color": 0, "-z": 0},
}


def check_argv(tool: str, arguments: dict, argv: list[str], tool_target: str) -> None:
    """Walk argv: our own flags, grammar options with canonical values, the target once."""
    tail = argv[1:]
    if tool == "gobuster":
        assert tail[0] == arguments.get("mode", "dir")
        tail = tail[1:]
        url = tail[tail.index("-u") + 1]
        host = f"[{tool_target}]" if ":" in tool_target else tool_target
        assert re.fullmatch(rf"https?://{re.escape(host)}(:[0-9]+)?/[^\s?#]*", url)
    grammar = grammar_for(tool, arguments.get("mode", "dir"))
    target_seen = 0
    i = 0
    while i < len(tail):
        token = tail[i]
        if token in FIXED[tool]:
            i += 1 + FIXED[tool][token]
            if token == "--domain":
                assert tail[i - 1] == arguments["target"]  # the vhost domain is only ever the target's name
            if token == "--range":
                target_seen += tail[i - 1] == tool_target
            continue
        if token == tool_target:
            target_seen += 1
            i += 1
            continue
        if tool == "nmap" and token.startswith("-T") and len(token) == 3:
            assert token[2] in "01234"
            i += 1
            continue
        assert token in grammar.names, f"{token!r} is not a grammar option"
        option = grammar.option(token)
        i += 1
        if option.value is not None:
            value = tail[i]
            i += 1
            assert value and not value.startswith("-"), value
            if tool == "nmap" and token == "--script":  # vetted scripts, by name only
                assert set(value.split(",")) <= NMAP_SCRIPTS.admitted(NMAP_SETTINGS.allowed_scripts), value
            assert option.value.canonical(value) == value
    assert target_seen == (0 if tool == "gobuster" else 1)
    assert sum(tool_target in token for token in tail) == 1


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(sorted(TOOL_SPECS)).flatmap(lambda t: st.tuples(st.just(t), ARGUMENTS[t])))
def test_every_built_argv_contains_only_checked_options_and_the_target_once(case):
    tool, arguments = case
    arguments = {k: v for k, v in arguments.items() if v is not None}
    try:
        call = prepare_call(TOOL_SPECS[tool], arguments, settings=SETTINGS[tool], policy=POLICY)
    except InvalidCall as exc:
        assert exc.field
        event(f"{tool} refused")
        return
    event(f"{tool} built")
    argv = list(call.argv)
    assert argv[0] == SETTINGS[tool].binary
    check_argv(tool, arguments, argv, call.resolved_targets[0])
    resolved = ipaddress.ip_network(call.resolved_targets[0])
    allowed = ipaddress.ip_network("10.0.0.0/8" if resolved.version == 4 else "fd00:1::/64")
    assert resolved[0] in allowed and resolved[-1] in allowed


@PROPERTY
@given(
    st.sampled_from(["nmap", "masscan", "gobuster"]).flatmap(
        lambda tool: st.tuples(st.just(tool), st.one_of(well_formed(tool), st.lists(TOKENS, max_size=8)))
    )
)
def test_rendering_is_canonical_and_stable(case):
    tool, tokens = case
    grammar = grammar_for(tool)
    try:
        parsed = grammar.parse(tokens)
    except InvalidCall:
        event("refused")
        return
    event(f"parsed {len(parsed)} options")
    once = render(parsed)
    assert render(grammar.parse(once)) == once
    assert all(p.value is None or not p.value.startswith("-") for p in parsed)


# ---------------------------------------------------------------- parsers

SAMPLES = Path(__file__).parent / "samples"
NMAP_XML = (SAMPLES / "nmap_full.xml").read_bytes()
FULL_NMAP_HOSTS = [h["address"] for h in TOOL_SPECS["nmap"].parse(NMAP_XML, truncated=False)["hosts"]]


@PROPERTY
@given(st.integers(0, len(NMAP_XML)))
def test_any_prefix_of_nmap_xml_parses_into_a_prefix_of_its_hosts(cut):
    result = TOOL_SPECS["nmap"].parse(NMAP_XML[:cut], truncated=cut < len(NMAP_XML))
    addresses = [h["address"] for h in result["hosts"] if h["address"] is not None]
    assert addresses == FULL_NMAP_HOSTS[: len(addresses)]
    assert result["complete"] == (cut >= NMAP_XML.rindex(b"</nmaprun>") + len(b"</nmaprun>"))
    assert all(h["partial"] for h in result["hosts"][len(addresses):])  # an address-less host is a partial one


VALIDATORS = {name: Draft202012Validator(spec.output_schema()) for name, spec in TOOL_SPECS.items()}


def _sample_prefixes(path: Path) -> st.SearchStrategy[bytes]:
    data = path.read_bytes()
    return st.integers(0, len(data)).map(lambda n: data[:n])


RAW_OUTPUT = st.one_of(st.binary(max_size=400), st.sampled_from(sorted(SAMPLES.iterdir())).flatmap(_sample_prefixes))


@PROPERTY
@given(st.sampled_from(sorted(TOOL_SPECS)), RAW_OUTPUT, st.booleans())
def test_parsers_never_raise_and_always_match_the_output_schema(tool, data, truncated):
    result = TOOL_SPECS[tool].parse(data, truncated=truncated)
    assert result["truncated"] or not truncated
    outcome = CallOutcome(tool=tool, call_id="p", ok=True, result=result)
    assert list(VALIDATORS[tool].iter_errors(outcome.model_dump(mode="json"))) == []


@PROPERTY
@given(st.text(max_size=200))
def test_progress_is_none_or_a_percentage(line):
    for spec in TOOL_SPECS.values():
        value = spec.progress(line)
        assert value is None or 0.0 <= value <= 100.0
