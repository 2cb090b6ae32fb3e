"""The parser of the `hermesx` command: options every verb takes, and how a module adds verbs.

Each module of verbs (:mod:`~hermesx.cli.atoms`, :mod:`~hermesx.cli.cluster`,
…) has a ``register`` that adds its verbs through :class:`Verbs`; a verb's
function takes the parsed arguments and prints its outcome.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["Parser", "Verb", "Verbs", "common_options"]

Verb = Callable[[argparse.Namespace], None]


class Parser(argparse.ArgumentParser):
    """argparse's own errors as one line ``error: …``, exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def common_options() -> Parser:
    """The options every verb takes: output, the cluster, and how much to say."""
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--zk", help="ZooKeeper connect string (default: $HERMESX_ZK or the local cluster)"
    )
    common.add_argument("--cluster", help="cluster name (default: $HERMESX_CLUSTER or 'local')")
    common.add_argument(
        "--tls",
        help="cluster certificate directory (default: $HERMESX_TLS or the local cluster's)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    return common


class Verbs:
    """The verbs of one level of the command (``hermesx VERB``, ``hermesx node VERB``)."""

    def __init__(
        self, sub: argparse._SubParsersAction[Parser], common: Parser, *, describe: bool
    ) -> None:
        self._sub = sub
        self._common = common
        self._describe = describe

    def add(self, name: str, func: Verb, help: str) -> argparse.ArgumentParser:
        """Add verb ``name``, run by ``func``; returns its parser for its own arguments."""
        description = help if self._describe else None
        p = self._sub.add_parser(name, parents=[self._common], help=help, description=description)
        p.set_defaults(func=func)
        return p

    def group(self, name: str, help: str) -> Verbs:
        """Add ``name`` as a verb of verbs (``hermesx node serve``)."""
        sub = self._sub.add_parser(name, help=help).add_subparsers(
            dest="what", required=True, parser_class=Parser
        )
        return Verbs(sub, self._common, describe=False)
