"""A node's configuration: what ``hermesx node serve`` and tests set (docs/DESIGN.md §4, §6).

:class:`NodeConfig` is a frozen value; :meth:`NodeConfig.validate` refuses a
configuration the node cannot run with before anything starts.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from hermesx.core.errors import ConfigurationError
from hermesx.core.identity import validate_name
from hermesx.observe.metrics import check_listen
from hermesx.rpc.callserver import CallLimits

__all__ = ["NodeConfig"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    listen: str = "127.0.0.1:0"
    # The call channel's listener (docs/DESIGN.md §4.1): "auto" is the gRPC
    # host with the next port (any free port when gRPC's is 0); "off" serves
    # calls over gRPC only.
    call_listen: str = "auto"
    # HOST[:PORT] registered for peers when it is not the listen address
    # (a wildcard listen, a translated address): docs/DESIGN.md §8.
    advertise: str = ""
    zk: str = "127.0.0.1:2181"
    cluster: str = "default"
    tags: tuple[str, ...] = ()
    data_dir: pathlib.Path | None = None
    hop_limit: int = 4
    session_timeout: float = 4.0
    deadline_ms: int = 5000
    memory_limit_bytes: int = 64 * 2**20
    max_payload_bytes: int = 4 * 2**20
    test_hooks: bool = False
    workers: int = 64
    # Invocations one atom may have waiting for it or running in it at once
    # (0: a quarter of the workers), so one slow atom cannot take every worker.
    max_calls_per_atom: int = 0
    # The atoms this node holds at most, and the most their memory caps
    # (memory_limit_bytes each) may add up to; past either a create or a move
    # here is refused with `capacity` (0: from the machine's memory,
    # hermesx/node/budget.py; docs/DESIGN.md §3).
    max_atoms: int = 0
    max_atom_memory_bytes: int = 0
    # A node that cannot answer its own Status for this long gives up its
    # name-service session (0: three session timeouts, at least 10 s).
    unresponsive_limit_s: float = 0.0
    # Cluster certificate directory: mutual TLS and the name-service secret.
    tls_dir: pathlib.Path | None = None
    # Prometheus endpoint: off, auto (the --listen host, a free port) or HOST:PORT.
    metrics_listen: str = "off"
    # OTLP/gRPC collector for traces ("": the OTEL_EXPORTER_OTLP_* variables, else off).
    otlp_endpoint: str = ""
    # What peers can make the call listener hold, and for how long (docs/DESIGN.md §4.1
    # "Limits"); tests shorten its time limits to see them act without waiting 30 s.
    call_limits: CallLimits = field(default_factory=CallLimits)

    def call_address(self) -> str | None:
        """Where the call channel listens (``host:port``), or None when it is off."""
        if self.call_listen == "off":
            return None
        if self.call_listen != "auto":
            return self.call_listen
        host, _, port = self.listen.rpartition(":")
        return f"{host}:{int(port) + 1 if port.isdigit() and int(port) else 0}"

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` for a configuration a node cannot run with."""
        validate_name(self.name, "node name")
        check_listen(self.metrics_listen)
        if self.workers < 2:
            raise ConfigurationError(f"workers must be at least 2, not {self.workers}")
        if self.max_calls_per_atom < 0:
            raise ConfigurationError(
                f"max_calls_per_atom must be 0 (default) or more, not {self.max_calls_per_atom}"
            )
        for limit in ("max_atoms", "max_atom_memory_bytes"):
            if getattr(self, limit) < 0:
                raise ConfigurationError(
                    f"{limit} must be 0 (default) or more, not {getattr(self, limit)}"
                )
        if 0 < self.max_atom_memory_bytes < self.memory_limit_bytes:
            raise ConfigurationError(
                f"max_atom_memory_bytes {self.max_atom_memory_bytes} is less than one atom's "
                f"memory cap ({self.memory_limit_bytes}): the node could hold no atom"
            )
        call = self.call_address()
        if call is not None:
            _, sep, port = call.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ConfigurationError(
                    f"call_listen {self.call_listen!r} is not host:port, 'auto' or 'off'"
                )
        if not 0 <= self.unresponsive_limit_s < float("inf"):
            raise ConfigurationError(
                "unresponsive_limit_s must be 0 (default) or a positive number of seconds, "
                f"not {self.unresponsive_limit_s}"
            )
