"""The option grammar: token forms, refusals, value kinds, canonical rendering."""

from __future__ import annotations

import os

import pytest

from actors.flags import (
    Choice,
    Duration,
    FileInDirectory,
    Grammar,
    Int,
    NameList,
    Option,
    Pattern,
    PortList,
    render,
)
from actors.results import InvalidCall


def sample(single_dash_long: bool = True) -> Grammar:
    return Grammar(
        [
            Option(("-p", "--ports"), PortList(100)),
            Option(("-T",), Int(0, 4), joined=True),
            Option(("-sV",)),
            Option(("-Pn",)),
            Option(("--top-ports",), Int(1, 1000)),
            Option(
                ("--script",), NameList(frozenset({"banner", "default"}), frozenset({"intrusive"})), repeatable=True
            ),
            Option(("--open",)),
            Option(("-m", "--method"), Choice(("GET", "HEAD"))),
            Option(("--host-timeout",), Duration(0.5, 3600)),
        ],
        forbidden={"-o": "output files are not allowed", "--datadir": "no data dirs", "-iL": "no input lists"},
        single_dash_long=single_dash_long,
        tool="sample",
    )


def argv(tokens: list[str], grammar: Grammar | None = None) -> list[str]:
    return render((grammar or sample()).parse(tokens))


def refused(tokens: list[str], grammar: Grammar | None = None, field: str = "extra_args") -> str:
    with pytest.raises(InvalidCall) as info:
        (grammar or sample()).parse(tokens, field=field)
    assert info.value.field == field
    return str(info.value)


# ---------------------------------------------------------------- token forms


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (["-p", "80"], ["-p", "80"]),
        (["-p80"], ["-p", "80"]),
        (["--ports", "80,443"], ["-p", "80,443"]),
        (["--ports=22-25"], ["-p", "22-25"]),
        (["-T4"], ["-T4"]),
        (["-T", "3"], ["-T3"]),
        (["-sV", "-Pn"], ["-sV", "-Pn"]),
        (["--top-ports", "0100"], ["--top-ports", "100"]),
        (["-top-ports", "10"], ["--top-ports", "10"]),  # getopt_long_only single-dash long form
        (["-top-ports=10"], ["--top-ports", "10"]),
        (["-script", "banner"], ["--script", "banner"]),
        (["--script=banner,default", "--script", "banner"], ["--script", "banner,default", "--script", "banner"]),
        (["-open"], ["--open"]),
        (["--host-timeout", "90"], ["--host-timeout", "90s"]),
        (["--host-timeout=500ms"], ["--host-timeout", "500ms"]),
        (["-mHEAD"], ["-m", "HEAD"]),
        ([], []),
    ],
)
def test_accepted_forms_render_canonically(tokens, expected):
    assert argv(tokens) == expected


def test_single_dash_long_forms_are_only_read_for_tools_that_have_them():
    assert "unknown" in refused(["-top-ports", "10"], sample(single_dash_long=False))
    assert argv(["--top-ports", "10"], sample(single_dash_long=False)) == ["--top-ports", "10"]


@pytest.mark.parametrize("token", ["10.0.0.1", "scanme.nmap.org", "80", "extra", "'-p'x"])
def test_positional_tokens_are_refused(token):
    assert "only options" in refused(["-sV", token])


@pytest.mark.parametrize("token", ["-", "--"])
def test_bare_dashes_are_refused(token):
    refused([token, "-sV"])


@pytest.mark.parametrize("token", ["--scr", "--top", "--op", "-scr", "--ope"])
def test_abbreviations_are_refused_with_a_hint(token):
    message = refused([token, "banner"] if "scr" in token else [token])
    assert "abbreviations are not accepted" in message


@pytest.mark.parametrize(
    "tokens, reason",
    [
        (["-oN", "/tmp/x"], "output files"),
        (["-oN/tmp/x"], "output files"),
        (["-oX", "-"], "output files"),
        (["-oA=x"], "output files"),
        (["--datadir", "/tmp"], "no data dirs"),
        (["--datadir=/tmp"], "no data dirs"),
        (["-datadir", "/tmp"], "no data dirs"),  # single-dash long spelling of a forbidden option
        (["-iL", "targets.txt"], "no input lists"),
        (["-iLtargets.txt"], "no input lists"),
    ],
)
def test_forbidden_options_are_refused_with_their_reason(tokens, reason):
    assert reason in refused(tokens)


@pytest.mark.parametrize("token", ["--unknown", "-X", "-sS", "--Open", "--OPEN", "-PN", "-sv", "--script-args"])
def test_undeclared_options_are_refused(token):
    assert "sample" in refused([token])


def test_flags_take_no_values():
    assert "takes no value" in refused(["--open=yes"])
    assert "takes no value" in refused(["-open=1"])


@pytest.mark.parametrize(
    "tokens",
    [
        ["-p"],
        ["--ports"],
        ["--top-ports="],
        ["-p", "-sV"],  # the next token is an option, not a value
        ["-p", "-80"],
        ["--ports=-1"],
        ["-p-"],  # nmap's "all ports" shorthand starts with '-'
        ["--script", "--script-args=x"],
    ],
)
def test_missing_empty_or_dash_values_are_refused(tokens):
    refused(tokens)


@pytest.mark.parametrize("value", ["80\n-iL", "ban\x00ner", "80\t", "x" * 2000])
def test_values_with_control_characters_or_huge_size_are_refused(value):
    refused(["-p", value])


def test_non_repeatable_options_may_appear_once():
    assert "more than once" in refused(["-p", "80", "-p", "443"])
    assert "more than once" in refused(["-T4", "-T", "3"])


def test_duplicates_across_fields_name_both_fields():
    g = sample()
    with pytest.raises(InvalidCall) as info:
        g.parse_sources([("ports", ["-p", "80"]), ("extra_args", ["--ports=443"])])
    assert info.value.field == "extra_args"
    assert "ports and extra_args" in str(info.value)


def test_parsed_options_remember_their_source_field():
    parsed = sample().parse_sources([("ports", ["-p", "80"]), ("extra_args", ["-sV"])])
    assert [(p.name, p.value, p.source) for p in parsed] == [("-p", "80", "ports"), ("-sV", None, "extra_args")]


def test_value_errors_name_the_option_and_field():
    message = refused(["--top-ports", "5000"], field="top_ports")
    assert "--top-ports" in message and "1..1000" in message


def test_rendering_is_a_fixed_point():
    g = sample()
    tokens = ["-p80,443", "-T", "2", "-script=banner", "--host-timeout=2m", "-Pn"]
    once = render(g.parse(tokens))
    assert render(g.parse(once)) == once


def test_grammar_refuses_malformed_declarations():
    with pytest.raises(ValueError):
        Grammar([Option(("-p",)), Option(("-p",))])
    with pytest.raises(ValueError):
        Grammar([Option(("p",))])


# ---------------------------------------------------------------- value kinds


@pytest.mark.parametrize("raw", ["-1", "1.5", "0x10", "١٢", "", "1e3", " 5", "99999999999"])
def test_int_refuses_anything_but_plain_ascii_digits(raw):
    with pytest.raises(ValueError):
        Int(0, 10**12).canonical(raw)


def test_int_bounds_are_inclusive():
    kind = Int(1, 10)
    assert kind.canonical("1") == "1" and kind.canonical("010") == "10"
    for raw in ("0", "11"):
        with pytest.raises(ValueError):
            kind.canonical(raw)


def test_duration_adds_units_and_caps():
    kind = Duration(min_sec=1, max_sec=120)
    assert kind.canonical("30") == "30s"
    assert kind.canonical("2m") == "2m"
    assert kind.canonical("1500ms") == "1500ms"
    for raw in ("3m", "1h", "10x", "1.5s", "s", "-1s"):
        with pytest.raises(ValueError):
            kind.canonical(raw)


@pytest.mark.parametrize("raw", ["0", "0s", "0ms", "0m", "0h", "999ms", "000"])
def test_duration_below_its_lower_bound_is_refused(raw):
    with pytest.raises(ValueError, match=r"outside the allowed range 1s\.\.120s"):
        Duration(min_sec=1, max_sec=120).canonical(raw)


def test_duration_bounds_are_inclusive_to_the_millisecond():
    kind = Duration(min_sec=1.5, max_sec=2)
    assert [kind.canonical(raw) for raw in ("1500ms", "2s", "2000ms")] == ["1500ms", "2s", "2000ms"]
    for raw in ("1499ms", "1s", "2001ms"):
        with pytest.raises(ValueError):
            kind.canonical(raw)
    assert Duration(min_sec=0, max_sec=10).canonical("0") == "0s"  # zero only where an option says so


def test_port_list_counts_and_normalises():
    kind = PortList(max_ports=1000, prefixes=("T", "U"))
    assert kind.canonical("22,080,1-10") == "22,80,1-10"
    assert kind.canonical("T:80,U:53-54") == "T:80,U:53-54"
    assert kind.count("1-1000") == 1000
    with pytest.raises(ValueError, match="limit is 1000"):
        kind.canonical("1-1001")


@pytest.mark.parametrize(
    "raw", ["0", "65536", "10-5", "http", "http*", "[1-1024]", "1024-", "-", "S:80", "80,,81", "80 ", "1-2-3"]
)
def test_port_list_refuses_unbounded_or_symbolic_specs(raw):
    with pytest.raises(ValueError):
        PortList(prefixes=("T", "U")).canonical(raw)


def test_port_list_without_prefixes_refuses_protocol_prefixes():
    with pytest.raises(ValueError, match="not allowed"):
        PortList(prefixes=("U",)).canonical("T:80")


def test_name_list_allows_only_plain_allowed_names():
    kind = NameList(frozenset({"banner", "default"}), frozenset({"intrusive"}))
    assert kind.canonical("Banner,default,banner") == "banner,default"
    for raw in ("intrusive", "vuln", "http-*", "./x.nse", "/tmp/x", "banner and default", "", "banner,"):
        with pytest.raises(ValueError):
            kind.canonical(raw)


def test_choice_is_exact():
    with pytest.raises(ValueError):
        Choice(("GET", "HEAD")).canonical("get")


def test_pattern_is_anchored_and_ascii():
    kind = Pattern(r"[a-z]+", "letters")
    assert kind.canonical("abc") == "abc"
    for raw in ("abc\n", "ab1", "é"):
        with pytest.raises(ValueError):
            kind.canonical(raw)


def test_file_in_directory_resolves_plain_names_only(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "small.txt").write_text("admin\n")
    (lists / "other").write_text("x\n")
    (tmp_path / "secret.txt").write_text("x\n")
    os.symlink(tmp_path / "secret.txt", lists / "escape.txt")
    kind = FileInDirectory(lists)
    assert kind.canonical("small.txt") == str(lists.resolve() / "small.txt")
    assert kind.canonical("small") == str(lists.resolve() / "small.txt")
    assert kind.canonical("other") == str(lists.resolve() / "other")
    for raw in ("../secret.txt", "..", "/etc/passwd", "sub/small.txt", ".hidden", "escape.txt", "small.txt/", "~x"):
        with pytest.raises(ValueError):
            kind.canonical(raw)
    with pytest.raises(ValueError, match=r"available: escape\.txt, other, small\.txt"):
        kind.canonical("missing")
