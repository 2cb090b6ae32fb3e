"""The `hermesx` command line (docs/DESIGN.md §8): its parser, and how a verb is run.

The verbs live in modules by group: :mod:`~hermesx.cli.offline` (run,
build), :mod:`~hermesx.cli.cluster` (up, down, nodes),
:mod:`~hermesx.cli.atoms` (create, invoke, migrate, …),
:mod:`~hermesx.cli.serve` (node and storesite processes),
:mod:`~hermesx.cli.gateway` (the HTTP gateway),
:mod:`~hermesx.cli.certs` and :mod:`~hermesx.cli.bench`; what they print is
:mod:`~hermesx.cli.output`'s. :func:`main` sets up logging and signals, runs
the verb, and turns any failure into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from hermesx.cli import atoms, bench, certs, cluster, deploy, gateway, kv, logs, offline, serve
from hermesx.cli.output import discard_stdout, fail
from hermesx.cli.parser import Parser, Verbs, common_options
from hermesx.core.config import check_environment
from hermesx.core.errors import HermesError
from hermesx.observe import tracing

__all__ = ["build_parser", "main"]

log = logging.getLogger("hermesx")

# Verbs that run a server process: they log what they do by default.
SERVERS = ("node", "storesite", "gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hermesx", description="Mobile WebAssembly atoms, invoked by name wherever they are."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    verbs = Verbs(sub, common_options(), describe=True)
    offline.register(verbs)
    cluster.register(verbs)
    atoms.register(verbs)
    logs.register(verbs)
    serve.register_node(verbs.group("node", "run a node process"))
    storesite = verbs.group("storesite", "run a storesite process")
    serve.register_storesite(storesite)
    atoms.register_home_move(storesite)
    certs.register(verbs.group("certs", "cluster certificates"))
    deploy.register(verbs)
    bench.register(verbs)
    kv.register(verbs.group("kv", "the sharded KV store and its transactions"))
    gateway.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    if args.verb in SERVERS:
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verb not in SERVERS:
        _interrupt_on_termination()
        tracing.configure("hermesx-cli")
    try:
        check_environment()
        args.func(args)
    except HermesError as exc:
        return fail(args, exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``hermesx demo | head``): the clean-up in the
        # verb's ``finally`` blocks has run; exit as a piped tool would,
        # without a traceback when Python flushes stdout at exit.
        discard_stdout()
        return 128 + signal.SIGPIPE
    except Exception as exc:  # a bug: still one line, with the type, and a log for details
        log.debug("unexpected failure", exc_info=True)
        return fail(args, exc)
    return 0


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP interrupt the verb like Ctrl-C does.

    Python's default for them ends the process at once, skipping the
    ``finally`` blocks that stop what a verb started (the demo's and the
    benchmarks' clusters); as a KeyboardInterrupt they run.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


if __name__ == "__main__":
    sys.exit(main())
