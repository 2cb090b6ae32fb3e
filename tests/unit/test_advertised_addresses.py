"""The address a server registers for its peers (docs/DESIGN.md §8): never a wildcard."""

from __future__ import annotations

import pytest

from hermesx.core import addresses
from hermesx.core.addresses import advertised_address, split_host_port
from hermesx.core.errors import ConfigurationError


def test_a_specific_listen_address_is_registered_as_bound() -> None:
    assert advertised_address("127.0.0.1:0", 4321, "", "node n1") == "127.0.0.1:4321"
    assert advertised_address("localhost:7000", 7000, None, "node n1") == "localhost:7000"


def test_advertise_replaces_the_host_and_keeps_the_bound_port_unless_given() -> None:
    assert advertised_address("0.0.0.0:0", 4321, "10.1.2.3", "node n1") == "10.1.2.3:4321"
    assert advertised_address("0.0.0.0:0", 4321, "h1.example:80", "node n1") == "h1.example:80"
    assert advertised_address("[::]:0", 4321, "[fd00::5]", "node n1") == "[fd00::5]:4321"


def test_a_wildcard_listen_registers_the_primary_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addresses, "primary_address", lambda ipv6=False: "10.9.8.7")
    assert advertised_address("0.0.0.0:7000", 7000, "", "node n1") == "10.9.8.7:7000"


def test_a_wildcard_listen_without_a_primary_address_is_refused_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(addresses, "primary_address", lambda ipv6=False: None)
    with pytest.raises(
        ConfigurationError, match=r"node n1 listens on 0\.0\.0\.0:7000.*--advertise"
    ):
        advertised_address("0.0.0.0:7000", 7000, "", "node n1")


@pytest.mark.parametrize("bad", ["0.0.0.0", "[::]:80", "::"])
def test_a_wildcard_advertise_address_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="storesite s1"):
        advertised_address("0.0.0.0:0", 1, bad, "storesite s1")


@pytest.mark.parametrize("bad", ["host:port", "host:70000", "fd00::1:80", "[fd00::1"])
def test_malformed_addresses_are_refused_with_the_address(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"HOST|port|IPv6"):
        split_host_port(bad, "--advertise")


def test_the_primary_address_is_never_loopback_or_a_wildcard() -> None:
    found = addresses.primary_address()
    assert found is None or not (found.startswith("127.") or found == "0.0.0.0")
