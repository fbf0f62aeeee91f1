"""Which network destinations image URLs may reach.

The rule: only globally routable unicast addresses, checked on every address a name
resolves to. Loopback, private, carrier-grade NAT (100.64.0.0/10, where some clouds put
their metadata service), link-local (169.254.169.254), multicast, reserved and
documentation ranges are refused unless allow-listed by host name or CIDR. IPv6
addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by the
IPv4 address inside.
"""

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for, if it embeds one; else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast (after unwrapping an embedded IPv4 address)."""
    ip = embedded_ipv4(ip)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class AddressPolicy:
    """Public destinations, plus the allow-listed host names and networks."""

    def __init__(self, allowed: list[str]):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def allows(self, host: str, ip: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        if any(ip in net or embedded_ipv4(ip) in net for net in self.networks):
            return True
        return is_public(ip)
