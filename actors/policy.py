"""Which targets a tool may be pointed at: the product's core promise.

Only an explicit allowlist counts (never `ipaddress.is_private`), and only one canonical spelling of
an address: a form the tools would parse differently (`010.0.0.1`, `10.1`, `10.0.0.*`) is refused.
Hostnames must end in an allowed domain and are resolved here; every address must be allowed and
the tool is given the address, so a changed DNS answer cannot redirect the scan.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from actors.results import InvalidCall
from actors.settings import IPAddress, IPNetwork, PolicySettings, within

Resolver = Callable[[str], Sequence[IPAddress]]

MAX_TARGET_LEN = 253
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
_IPV4_CIDR = re.compile(rf"({_IPV4.pattern})/(3[0-2]|[12][0-9]|[0-9])", re.ASCII)
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}", re.ASCII)
_IPV6_CIDR = re.compile(r"([0-9A-Fa-f:.]{2,45})/(12[0-8]|1[01][0-9]|[1-9][0-9]|[0-9])", re.ASCII)
_IPV4_PORT = re.compile(r"[0-9.]+:[0-9]+", re.ASCII)
_IP_LIKE = re.compile(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}", re.ASCII)
_RANGE_LIKE = re.compile(r"[0-9][0-9.-]*", re.ASCII)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)


@dataclass(frozen=True)
class ResolvedTarget:
    """A target that passed the policy, in the form the tool will be given."""

    given: str
    kind: Literal["ip", "cidr", "host"]
    tool_target: str  # what goes into argv: an address or a canonical CIDR
    addresses: tuple[IPAddress, ...] = ()  # ip: itself; host: every resolved address
    network: IPNetwork | None = None  # cidr only
    hostname: str | None = None  # host only, normalised (lower case, no trailing dot)
    host_count: int = 1

    @property
    def version(self) -> int:
        return self.network.version if self.network is not None else self.addresses[0].version

    @property
    def resolved(self) -> tuple[str, ...]:
        """Resolved form for results and audit: the tool's target first."""
        if self.kind == "host":
            return tuple(str(a) for a in self.addresses)
        return (self.tool_target,)


def dns_resolver(*, ipv6: bool) -> Resolver:
    """A resolver over the system's getaddrinfo (blocking; no packets in tests)."""

    family = socket.AF_UNSPEC if ipv6 else socket.AF_INET

    def resolve(name: str) -> list[IPAddress]:
        infos = socket.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]

    return resolve


class TargetPolicy:
    """Checks targets against `PolicySettings`; see the module docstring."""

    def __init__(self, settings: PolicySettings, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self._networks = tuple(settings.allowed_networks)
        self._ipv6 = any(n.version == 6 for n in self._networks)
        # Names missing from the static map are asked of this (the system's DNS unless one is given).
        self.resolver = resolver or dns_resolver(ipv6=self._ipv6)

    def with_resolver(self, resolver: Resolver) -> TargetPolicy:
        """The same policy, asking `resolver` for names."""
        return TargetPolicy(self.settings, resolver)

    # -- public ------------------------------------------------------------

    def check(self, target: str) -> ResolvedTarget:
        _one_token(target)
        if _IPV4.fullmatch(target):
            return self._address(target, ipaddress.IPv4Address(target))
        if match := _IPV4_CIDR.fullmatch(target):
            return self._cidr(target, match[1], int(match[2]))
        if ":" in target:
            return self._ipv6_target(target)
        return self._hostname(target)

    def lookup_name(self, target: object) -> str | None:
        """The name `check(target)` will ask the resolver for; None when it asks none.

        None for addresses, networks, names in the static map, with DNS off,
        and for targets `check` refuses before any look-up.
        """
        try:
            text = _one_token(target)
            if _IPV4.fullmatch(text) or _IPV4_CIDR.fullmatch(text) or ":" in text:
                return None
            name = self._allowed_name(text)
        except InvalidCall:
            return None
        return name if self.settings.dns and name not in self.settings.hosts else None

    def is_allowed(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self._networks)

    def allows_network(self, network: IPNetwork) -> bool:
        return within(network, self._networks)

    # -- forms ---------------------------------------------------------------

    def _address(self, given: str, address: IPAddress) -> ResolvedTarget:
        self._require_allowed(address)
        return ResolvedTarget(given, "ip", str(address), addresses=(address,))

    def _cidr(self, given: str, base: str, prefix: int) -> ResolvedTarget:
        try:
            network = ipaddress.ip_network(f"{base}/{prefix}", strict=True)
        except ValueError:
            canonical = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
            raise InvalidCall(
                f"{given} has host bits set; write the network as {canonical}", field="target"
            ) from None
        if not self.allows_network(network):
            raise InvalidCall(f"{network} is not inside an allowed network ({self._allowed_text()})", field="target")
        if network.num_addresses > self.settings.max_hosts:
            raise InvalidCall(
                f"{network} has {network.num_addresses} addresses; at most {self.settings.max_hosts} "
                f"hosts per call are allowed, so split it into smaller networks",
                field="target",
            )
        return ResolvedTarget(given, "cidr", str(network), network=network, host_count=network.num_addresses)

    def _ipv6_target(self, given: str) -> ResolvedTarget:
        """Anything with a colon: an IPv6 address or network, or a URL or host:port to explain."""
        if "://" in given:
            raise InvalidCall(f"{given!r} looks like a URL; give only the host or address", field="target")
        if _IPV4_PORT.fullmatch(given):
            raise InvalidCall(f"{given!r} includes a port; give the address alone and ports separately", field="target")
        cidr = _IPV6_CIDR.fullmatch(given)
        if not cidr and not _IPV6.fullmatch(given):
            raise InvalidCall(f"{given!r} is not an IPv4/IPv6 address, network or hostname", field="target")
        if not self._ipv6:
            raise InvalidCall("IPv6 targets are refused: no IPv6 network is allowed", field="target")
        if cidr:
            self._parse_ipv6(cidr[1])
            return self._cidr(given, cidr[1], int(cidr[2]))
        return self._address(given, self._parse_ipv6(given))

    def _parse_ipv6(self, text: str) -> ipaddress.IPv6Address:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidCall(f"{text!r} is not a valid IPv6 address", field="target") from None
        if address.ipv4_mapped is not None or address.sixtofour is not None or address.teredo is not None:
            raise InvalidCall(f"{text} embeds an IPv4 address; give the IPv4 address itself", field="target")
        return address

    def _hostname(self, given: str) -> ResolvedTarget:
        name = self._allowed_name(given)
        addresses = self._resolve(name)
        for address in addresses:
            if not self.is_allowed(address):
                raise InvalidCall(
                    f"{name} resolves to {address}, which is outside the allowed networks", field="target"
                )
        return ResolvedTarget(given, "host", str(addresses[0]), addresses=addresses, hostname=name)

    def _allowed_name(self, given: str) -> str:
        """The normalised hostname, if `given` is one inside an allowed domain."""
        name = given.lower()
        name = name.removesuffix(".")
        if not _HOSTNAME.fullmatch(name):
            raise InvalidCall(
                f"{given!r} is not a dotted-quad IPv4 address, a CIDR network or a hostname "
                "(octal, hex, shortened or ranged addresses like 10.0.0.* or 10.0.0.1-5 are refused)",
                field="target",
            )
        if _IP_LIKE.fullmatch(name) or _RANGE_LIKE.fullmatch(name) or name.rsplit(".", 1)[-1].isdigit():
            # Resolvers read these as addresses (inet_aton: 10.1, 0x0a.1, 167772161), never as names.
            raise InvalidCall(
                f"{given!r} is not a canonical dotted-quad IPv4 address "
                "(octal, hex, shortened, integer and ranged forms are refused)",
                field="target",
            )
        domains = self.settings.allowed_domains
        if not any(name == d or name.endswith("." + d) for d in domains):
            raise InvalidCall(
                f"hostname {name} is outside the allowed domains ({', '.join(domains) or 'none'})", field="target"
            )
        return name

    # -- resolution --------------------------------------------------------------

    def _resolve(self, name: str) -> tuple[IPAddress, ...]:
        static = self.settings.hosts.get(name)
        if static is not None:
            return (static,)
        if not self.settings.dns:
            raise InvalidCall(f"{name} is not in the static hosts map and DNS lookups are disabled", field="target")
        try:
            raw = list(self.resolver(name))
        except (OSError, LookupError, UnicodeError) as exc:
            raise InvalidCall(f"could not resolve {name}: {exc}", field="target") from None
        addresses: list[IPAddress] = []
        for item in raw:
            try:
                address = ipaddress.ip_address(str(item).split("%")[0])
            except ValueError:
                raise InvalidCall(f"{name} resolved to an invalid address {item!r}", field="target") from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise InvalidCall(f"{name} did not resolve to any address", field="target")
        return tuple(addresses)

    def _require_allowed(self, address: IPAddress) -> None:
        if not self.is_allowed(address):
            raise InvalidCall(f"{address} is not inside an allowed network ({self._allowed_text()})", field="target")

    def _allowed_text(self) -> str:
        return ", ".join(str(n) for n in self._networks) or "none configured"


def _one_token(target: object) -> str:
    if not isinstance(target, str) or not target:
        raise InvalidCall("target must be a non-empty string", field="target")
    if len(target) > MAX_TARGET_LEN or not target.isascii() or not target.isprintable() or " " in target:
        raise InvalidCall("target must be one IPv4 address, CIDR network or hostname without spaces", field="target")
    return target
