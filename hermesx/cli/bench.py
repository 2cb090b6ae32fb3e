"""`hermesx bench` (a benchmark's figures) and `hermesx demo` (the expense-voucher demo)."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

from hermesx.cli.output import emit, progress, table
from hermesx.cli.parser import Verbs
from hermesx.core.errors import ConfigurationError

__all__ = ["register"]


def _figures(args: argparse.Namespace) -> dict[str, float]:
    """Run the benchmark ``args.what`` (each loads only what it measures)."""
    if args.what == "runtime":
        from hermesx.bench.runtime import run as run_runtime

        return run_runtime()
    if args.what == "naming":
        from nameservice.bench import run as run_naming

        return run_naming(args.zk)
    if args.what == "invoke":
        seconds = args.seconds if args.seconds is not None else 2.0
        rounds = args.rounds if args.rounds is not None else 15
        _check_invoke(seconds, rounds)
        from hermesx.bench.invoke import run as run_invoke

        return run_invoke(progress=progress(args), seconds=seconds, rounds=rounds)
    if args.what == "breakdown":
        from hermesx.bench.breakdown import run as run_breakdown

        return run_breakdown(
            progress=progress(args), seconds=args.seconds if args.seconds is not None else 5.0
        )
    if args.what == "storesite":
        from hermesx.bench.storesite import run as run_storesite

        return run_storesite(progress=progress(args), atoms=args.atoms or 10_000)
    if args.what == "gateway":
        from hermesx.bench.gateway import run as run_gateway

        return run_gateway(progress=progress(args))
    if args.what == "atoms":
        from hermesx.bench.atoms import run as run_atoms

        return run_atoms(args.atoms or 100_000, progress=progress(args))
    if args.what == "kv":
        from hermesx.bench.kv import run as run_kv

        return run_kv(
            progress(args),
            keys=args.keys,
            threads=args.threads,
            seconds=args.seconds if args.seconds is not None else 4.0,
            shards=args.shards,
        )
    from hermesx.bench.migrate import run as run_migrate

    return run_migrate(progress=progress(args))


def _check_invoke(seconds: float, rounds: int) -> None:
    """Refuse bad arguments of `bench invoke` before it loads and starts anything."""
    if not 0 < seconds <= 3600:
        raise ConfigurationError(f"--seconds must be above 0 and at most 3600, not {seconds}")
    if not 1 <= rounds <= 10_000:
        raise ConfigurationError(f"--rounds must be 1 to 10,000, not {rounds}")


def cmd_bench(args: argparse.Namespace) -> None:
    figures = _figures(args)
    if args.what == "invoke":
        from hermesx.bench.goals import report

        emit(args, figures, lambda: report(figures, table))
        return
    if args.what == "breakdown":
        from hermesx.bench.breakdown import describe

        emit(args, figures, lambda: describe(figures))
        return
    emit(
        args,
        figures,
        lambda: table(
            [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in figures.items()],
            ["FIGURE", "VALUE"],
        ),
    )


def cmd_demo(args: argparse.Namespace) -> None:
    # The demo lives with its atoms in examples/, beside the package.
    script = (
        pathlib.Path(__file__).resolve().parents[2] / "examples" / "expense_voucher" / "demo.py"
    )
    spec = importlib.util.spec_from_file_location("hermesx_demo_expense_voucher", script)
    if spec is None or spec.loader is None or not script.exists():
        raise ConfigurationError(f"the demo is not installed here (no {script})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.run_demo(json_output=args.json, progress=progress(args))


def register(verbs: Verbs) -> None:
    p = verbs.add("bench", cmd_bench, "run a benchmark and print its figures")
    p.add_argument(
        "what",
        choices=[
            "runtime",
            "naming",
            "invoke",
            "breakdown",
            "storesite",
            "migrate",
            "atoms",
            "kv",
            "gateway",
        ],
    )
    p.add_argument(
        "--atoms",
        type=int,
        default=None,
        help="storesite: how many dormant atoms to create (10,000); "
        "atoms: how many active atoms one process holds (100,000)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="invoke: how long each path is measured, in all (2 s); "
        "breakdown: each profiling window, whole seconds (5 s); kv: per workload (4 s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="invoke: calls through each forwarding chain (15; and 20x as many disk syncs)",
    )

    p.add_argument("--keys", type=int, default=10_000, help="kv: keys in the store (10,000)")
    p.add_argument("--threads", type=int, default=8, help="kv: client threads (8)")
    p.add_argument("--shards", type=int, default=16, help="kv: shards per store (16)")

    p = verbs.add("demo", cmd_demo, "run a demo")
    p.add_argument("name", choices=["expense-voucher"])
