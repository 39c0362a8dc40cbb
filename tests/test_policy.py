"""Target policy: allowlist, canonical forms, host cap, name resolution."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pytest

from actors.policy import TargetPolicy, dns_resolver
from actors.results import InvalidCall
from actors.settings import PolicySettings

ip = ipaddress.ip_address


class FakeResolver:
    """Answers from a dict and records every name it was asked for."""

    def __init__(self, answers: dict[str, list[str]] | None = None, error: Exception | None = None) -> None:
        self.answers = answers or {}
        self.error = error
        self.calls: list[str] = []

    def __call__(self, name: str) -> list:
        self.calls.append(name)
        if self.error is not None:
            raise self.error
        if name not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip(a) for a in self.answers[name]]


def policy(resolver=None, **overrides) -> TargetPolicy:
    settings = {"dns": resolver is not None, **overrides}
    return TargetPolicy(PolicySettings(**settings), resolver=resolver)


def refused(p: TargetPolicy, target: str) -> InvalidCall:
    with pytest.raises(InvalidCall) as info:
        p.check(target)
    assert info.value.field == "target"
    return info.value


# ---------------------------------------------------------------- addresses


def test_canonical_ipv4_inside_the_allowlist_is_accepted():
    resolved = policy().check("10.1.2.3")
    assert resolved.kind == "ip"
    assert resolved.tool_target == "10.1.2.3"
    assert resolved.addresses == (ip("10.1.2.3"),)
    assert resolved.host_count == 1
    assert resolved.hostname is None
    assert resolved.resolved == ("10.1.2.3",)
    assert resolved.version == 4


@pytest.mark.parametrize("target", ["10.0.0.0", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.0.1"])
def test_edges_of_the_default_networks_are_accepted(target):
    assert policy().check(target).tool_target == target


@pytest.mark.parametrize(
    "target",
    [
        "0.0.0.0",  # is_private admits it
        "127.0.0.1",  # loopback is not a lab network unless configured
        "169.254.169.254",  # cloud metadata; is_private admits it
        "240.0.0.1",  # reserved; is_private admits it
        "100.64.0.1",  # carrier-grade NAT
        "172.32.0.1",  # just outside 172.16/12
        "172.15.255.255",
        "192.169.0.1",
        "11.0.0.1",
        "8.8.8.8",
        "255.255.255.255",
    ],
)
def test_addresses_outside_the_allowlist_are_refused(target):
    assert "allowed network" in str(refused(policy(), target))


def test_only_the_configured_allowlist_counts():
    p = policy(allowed_networks=["192.0.2.0/28"])
    assert p.check("192.0.2.15").tool_target == "192.0.2.15"
    refused(p, "192.0.2.16")
    refused(p, "10.0.0.1")


@pytest.mark.parametrize(
    "target",
    [
        "010.0.0.1",  # octal in inet_aton
        "10.0.0.01",
        "10.00.0.1",
        "0x0a.0.0.1",  # hex
        "0xa000001",
        "10.1",  # short form → 10.0.0.1
        "10.0.1",
        "167772161",  # decimal integer form
        "10.0.0.256",
        "10.0.0.1.",
        "10.0.0",
        "10.0.0.*",  # nmap wildcard
        "10.0.0.1-5",  # nmap range
        "10.0.0-3.1",
        "10.0.0.1,10.0.0.2",  # comma list
        "10.0.0.1 10.0.0.2",
        " 10.0.0.1",
        "10.0.0.1\n",
        "10.0.0.1\t",
        "10.0.0.1/24/8",
        "10.0.0.1:80",
        "\u0661\u0660.0.0.1",  # non-ASCII digits (Arabic-Indic one, zero)
        "10.0.0.1%eth0",
        "",
    ],
)
def test_non_canonical_or_ranged_forms_are_refused(target):
    refused(policy(), target)


@pytest.mark.parametrize(
    "target, hint",
    [
        ("http://10.0.0.5/", "URL"),
        ("10.0.0.5:80", "port"),
        ("10.0.0.1-254", "ranged"),
        ("0x0a000001", "hex"),
        ("10.1", "shortened"),
        ("1.2.3.4.5", "canonical"),
    ],
)
def test_refusals_say_what_to_give_instead(target, hint):
    assert hint in str(refused(policy(), target))


def test_numeric_names_are_never_resolved_even_in_an_allowed_domain():
    fake = FakeResolver({"10.1": ["10.0.0.1"], "0x0a.1": ["10.0.0.1"]})
    p = policy(fake, allowed_domains=["1"])
    for target in ("10.1", "0x0a.1", "x.1"):
        refused(p, target)
    assert fake.calls == []


# ---------------------------------------------------------------- networks


def test_cidr_inside_an_allowed_network_is_accepted_with_its_size():
    resolved = policy().check("192.168.10.0/24")
    assert resolved.kind == "cidr"
    assert resolved.tool_target == "192.168.10.0/24"
    assert resolved.network == ipaddress.ip_network("192.168.10.0/24")
    assert resolved.host_count == 256
    assert resolved.addresses == ()
    assert resolved.resolved == ("192.168.10.0/24",)


def test_cidr_with_host_bits_is_refused_with_the_network_to_use():
    err = refused(policy(), "10.0.0.5/24")
    assert "10.0.0.0/24" in str(err)


def test_host_cap_applies_to_networks():
    p = policy(max_hosts=256)
    assert p.check("10.0.0.0/24").host_count == 256
    assert "at most 256" in str(refused(p, "10.0.0.0/23"))
    one = policy(max_hosts=1)
    assert one.check("10.0.0.7/32").host_count == 1
    refused(one, "10.0.0.6/31")


@pytest.mark.parametrize("target", ["0.0.0.0/0", "10.0.0.0/7", "192.168.0.0/15", "172.0.0.0/8", "8.8.8.0/24"])
def test_networks_reaching_outside_the_allowlist_are_refused(target):
    refused(policy(max_hosts=65536), target)


@pytest.mark.parametrize(
    "target", ["10.0.0.0/024", "10.0.0.0/+24", "10.0.0.0/33", "10.0.0.0/255.255.255.0", "10.0.0.0/"]
)
def test_non_canonical_prefixes_are_refused(target):
    refused(policy(), target)


# ---------------------------------------------------------------- hostnames


def test_static_hosts_map_is_used_before_any_resolver():
    fake = FakeResolver({"web.lab.internal": ["10.9.9.9"]})
    p = policy(fake, hosts={"web.lab.internal": "10.0.0.7"})
    resolved = p.check("web.lab.internal")
    assert resolved.kind == "host"
    assert resolved.hostname == "web.lab.internal"
    assert resolved.tool_target == "10.0.0.7"
    assert fake.calls == []


def test_names_are_normalised_before_lookup():
    p = policy(hosts={"web.lab.internal": "10.0.0.7"})
    resolved = p.check("WEB.Lab.Internal.")
    assert resolved.hostname == "web.lab.internal"
    assert resolved.given == "WEB.Lab.Internal."
    assert resolved.tool_target == "10.0.0.7"


def test_resolver_is_used_for_names_missing_from_the_static_map():
    fake = FakeResolver({"db.lab.internal": ["10.0.0.20", "10.0.0.21", "10.0.0.20"]})
    resolved = policy(fake).check("db.lab.internal")
    assert fake.calls == ["db.lab.internal"]
    assert resolved.addresses == (ip("10.0.0.20"), ip("10.0.0.21"))
    assert resolved.tool_target == "10.0.0.20"
    assert resolved.resolved == ("10.0.0.20", "10.0.0.21")
    assert resolved.host_count == 1


def test_every_resolved_address_must_be_allowed():
    fake = FakeResolver({"mixed.lab.internal": ["10.0.0.5", "8.8.8.8"]})
    err = refused(policy(fake), "mixed.lab.internal")
    assert "8.8.8.8" in str(err)


def test_static_map_entries_are_checked_like_any_address():
    p = policy(hosts={"meta.lab.internal": "169.254.169.254"})
    assert "169.254.169.254" in str(refused(p, "meta.lab.internal"))


def test_without_dns_unknown_names_are_refused_and_nothing_is_resolved():
    fake = FakeResolver({"x.lab.internal": ["10.0.0.1"]})
    p = TargetPolicy(PolicySettings(dns=False), resolver=fake)
    assert "DNS" in str(refused(p, "x.lab.internal"))
    assert fake.calls == []


@pytest.mark.parametrize(
    "error", [socket.gaierror(socket.EAI_NONAME, "no such name"), OSError("network down"), UnicodeError("idna")]
)
def test_resolution_failures_are_refusals(error):
    refused(policy(FakeResolver(error=error)), "gone.lab.internal")


def test_empty_answers_are_refused():
    refused(policy(FakeResolver({"empty.lab.internal": []})), "empty.lab.internal")


def test_garbage_answers_from_a_resolver_are_refused():
    p = policy(lambda name: ["not-an-address"])
    refused(p, "odd.lab.internal")


@pytest.mark.parametrize(
    "target",
    [
        "evillab.internal",  # suffix without a label boundary
        "lab.internal.evil.com",
        "lab-internal",
        "internal",
        "example.com",
        "web.lab.internal.attacker.net",
        "web_1.lab.internal",  # not an LDH label
        "-web.lab.internal",
        "web-.lab.internal",
        "web..lab.internal",
        ".lab.internal",
        "wéb.lab.internal",
        "a" * 64 + ".lab.internal",
        "localhost",
        "web.lab.internal:8080",
        "http://web.lab.internal/",
        "web.lab.internal/24",
        "*.lab.internal",
    ],
)
def test_names_outside_the_allowed_domains_or_malformed_are_refused_without_lookup(target):
    fake = FakeResolver({target.lower(): ["10.0.0.1"]})
    refused(policy(fake), target)
    assert fake.calls == []


def test_the_allowed_domain_itself_and_deep_subdomains_are_names_in_the_domain():
    fake = FakeResolver({"lab.internal": ["10.0.0.1"], "a.b.c.lab.internal": ["10.0.0.2"]})
    p = policy(fake)
    assert p.check("lab.internal").tool_target == "10.0.0.1"
    assert p.check("a.b.c.lab.internal").tool_target == "10.0.0.2"


# ---------------------------------------------------------------- which targets need a look-up


LOOKUP_PROBES = [
    "db.lab.internal",
    "DB.Lab.Internal.",
    "web.lab.internal",  # in the static map
    "WEB.lab.internal.",
    "lab.internal",
    "10.0.0.5",
    "10.0.0.0/24",
    "fd00:1::5",
    "10.1",
    "0x0a.0.0.1",
    "example.com",
    "web.lab.internal:8080",
    "web.lab.internal/24",
    "*.lab.internal",
    "",
    " db.lab.internal",
    "a" * 300,
    None,
    7,
]


@pytest.mark.parametrize("dns", [True, False])
@pytest.mark.parametrize("target", LOOKUP_PROBES)
def test_lookup_name_is_the_name_check_asks_the_resolver_for(target, dns):
    fake = FakeResolver(error=socket.gaierror(socket.EAI_NONAME, "no such name"))
    p = TargetPolicy(
        PolicySettings(dns=dns, hosts={"web.lab.internal": "10.0.0.7"}, allowed_networks=["10.0.0.0/8", "fd00:1::/64"]),
        resolver=fake,
    )
    name = p.lookup_name(target)
    with contextlib.suppress(InvalidCall):
        p.check(target)
    assert fake.calls == ([] if name is None else [name])


def test_lookup_name_is_normalised_and_none_without_dns():
    assert policy(FakeResolver()).lookup_name("DB.Lab.Internal.") == "db.lab.internal"
    assert policy().lookup_name("db.lab.internal") is None


# ---------------------------------------------------------------- IPv6


def test_ipv6_is_refused_unless_an_ipv6_network_is_allowed():
    p = policy()
    assert "IPv6" in str(refused(p, "fd00::1"))
    refused(p, "fd00::/64")
    refused(p, "::1")


def test_ipv6_inside_an_allowed_ipv6_network_is_accepted_in_compressed_form():
    p = policy(allowed_networks=["10.0.0.0/8", "fd00:1::/64"])
    resolved = p.check("FD00:1:0:0:0:0:0:5")
    assert resolved.tool_target == "fd00:1::5"
    assert resolved.version == 6
    refused(p, "fd00:2::5")


def test_ipv6_networks_follow_the_same_rules():
    p = policy(allowed_networks=["fd00:1::/64"], max_hosts=256)
    resolved = p.check("fd00:1::/120")
    assert resolved.host_count == 256
    assert resolved.tool_target == "fd00:1::/120"
    refused(p, "fd00:1::/119")  # 512 addresses
    refused(p, "fd00:1::1/120")  # host bits


@pytest.mark.parametrize("target", ["::ffff:10.0.0.1", "2002:a00:1::1", "fd00:1::5%eth0", "fd00:1::5/64/1", "fd00:::1"])
def test_ipv6_forms_that_hide_or_decorate_an_address_are_refused(target):
    refused(policy(allowed_networks=["fd00:1::/64", "::/0"], max_hosts=65536), target)


def test_names_resolving_to_ipv6_need_an_allowed_ipv6_network():
    fake = FakeResolver({"v6.lab.internal": ["10.0.0.1", "fd00:1::9"]})
    refused(policy(fake), "v6.lab.internal")
    ok = policy(fake, allowed_networks=["10.0.0.0/8", "fd00:1::/64"]).check("v6.lab.internal")
    assert ok.addresses == (ip("10.0.0.1"), ip("fd00:1::9"))


# ---------------------------------------------------------------- default resolver


def test_default_resolver_asks_getaddrinfo_for_ipv4_only_without_ipv6_networks(monkeypatch):
    asked = []

    def fake_getaddrinfo(host, port, family=0, type=0, *args, **kwargs):
        asked.append((host, family))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.30", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 0, 0, 2)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert dns_resolver(ipv6=False)("x.lab.internal") == [ip("10.0.0.30"), ip("fe80::1")]
    assert asked == [("x.lab.internal", socket.AF_INET)]
    dns_resolver(ipv6=True)("y.lab.internal")
    assert asked[-1] == ("y.lab.internal", socket.AF_UNSPEC)


def test_policy_uses_the_default_resolver_when_dns_is_enabled(monkeypatch):
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.31", 0))]
    )
    assert TargetPolicy(PolicySettings(dns=True)).check("z.lab.internal").tool_target == "10.0.0.31"
