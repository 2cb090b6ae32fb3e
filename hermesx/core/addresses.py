"""The address a server registers: one its peers on other hosts can reach (docs/DESIGN.md §8).

A node, a storesite or a gateway binds ``--listen HOST:PORT`` and registers in
the name service the address peers should dial. The two differ when a process
listens on a wildcard (``0.0.0.0``, ``::``) or behind a translated address:

* ``--advertise HOST[:PORT]`` says it outright (the port defaults to the
  bound one, so ``--listen 0.0.0.0:0 --advertise 10.0.0.5`` works);
* a wildcard listen without ``--advertise`` registers the host's primary
  address: the source address of its route towards other hosts (asking the
  kernel's routing table; no packet is sent);
* a host without such a route (no default route: a namespace, an isolated
  host) has no primary address, and the process refuses to start with one
  line naming the flag to pass, rather than registering ``0.0.0.0:PORT``
  that no peer can dial.

:func:`advertised_address` is the one function every server calls with its
listen address and bound port; the gateway calls it the same way.
"""

from __future__ import annotations

import ipaddress
import socket

from hermesx.core.errors import ConfigurationError

__all__ = ["WILDCARD_HOSTS", "advertised_address", "primary_address", "split_host_port"]

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})

# A documentation address (RFC 5737): connecting a UDP socket to it only asks
# the routing table which source address the host would use; nothing is sent.
_PROBE_V4 = "192.0.2.1"
_PROBE_V6 = "2001:db8::1"


def split_host_port(address: str, what: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` (IPv6 in brackets) → host and port (None when absent)."""
    address = address.strip()
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"{what} {address!r} is not HOST[:PORT]")
        port_text = rest[1:] if rest else ""
        host = f"[{host}]"
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    elif ":" in address:
        raise ConfigurationError(f"{what} {address!r}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, port_text = address, ""
    if not port_text:
        return host, None
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{what} {address!r}: port {port_text!r} is not 0 to 65535")
    return host, port


def primary_address(ipv6: bool = False) -> str | None:
    """The source address this host would use towards other hosts, or None without a route."""
    family, probe = (socket.AF_INET6, _PROBE_V6) if ipv6 else (socket.AF_INET, _PROBE_V4)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe_socket:
            probe_socket.connect((probe, 9))
            found = str(probe_socket.getsockname()[0])
    except OSError:
        return None
    try:
        parsed = ipaddress.ip_address(found)
    except ValueError:
        return None
    if parsed.is_loopback or parsed.is_unspecified or parsed.is_link_local:
        return None
    return f"[{found}]" if ipv6 else found


def advertised_address(listen: str, bound_port: int, advertise: str | None, what: str) -> str:
    """The ``HOST:PORT`` that ``what`` (e.g. ``node n1``) registers for peers to dial.

    ``listen`` is the address it bound, ``bound_port`` the port it got.
    Raises :class:`ConfigurationError` when there is no address a peer can
    reach: a wildcard listen on a host without a primary address.
    """
    if advertise:
        host, port = split_host_port(advertise, f"{what}: --advertise")
        if host in WILDCARD_HOSTS:
            raise ConfigurationError(
                f"{what}: --advertise {advertise!r} is a wildcard; give an address peers can dial"
            )
        return f"{host}:{bound_port if port in (None, 0) else port}"
    host, _ = split_host_port(listen, f"{what}: --listen")
    if host not in WILDCARD_HOSTS:
        return f"{host}:{bound_port}"
    primary = primary_address(ipv6=host in ("::", "[::]"))
    if primary is None:
        raise ConfigurationError(
            f"{what} listens on {listen} but this host has no primary address (no route to "
            "other hosts): pass --advertise HOST[:PORT], the address its peers dial"
        )
    return f"{primary}:{bound_port}"
