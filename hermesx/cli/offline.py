"""Verbs that need no cluster: `hermesx run` (one atom, in-process) and `hermesx build`."""

from __future__ import annotations

import argparse
import json
import pathlib

from hermesx.cli.output import emit
from hermesx.cli.parser import Verbs
from hermesx.core import codec

__all__ = ["register"]


def cmd_run(args: argparse.Namespace) -> None:
    from hermesx.runtime.run import run_once

    result = run_once(
        pathlib.Path(args.wasm),
        args.method,
        codec.json_to_msgpack(args.args) if args.args is not None else codec.pack(None),
        codec.json_to_msgpack(args.init) if args.init is not None else b"",
    )
    value = codec.msgpack_to_python(result)
    emit(args, {"result": value}, json.dumps(value))


def cmd_build(args: argparse.Namespace) -> None:
    from hermesx.runtime.build import build_atom

    out = build_atom(pathlib.Path(args.src), pathlib.Path(args.output))
    emit(
        args,
        {"output": str(out), "bytes": out.stat().st_size},
        f"built {out} ({out.stat().st_size} bytes)",
    )


def register(verbs: Verbs) -> None:
    p = verbs.add("run", cmd_run, "run one atom in-process, no cluster")
    p.add_argument("wasm")
    p.add_argument("method")
    p.add_argument("args", nargs="?", help="JSON arguments")
    p.add_argument("--init", help="JSON arguments for hx_init")

    p = verbs.add("build", cmd_build, "compile an atom written in C to WebAssembly")
    p.add_argument("src")
    p.add_argument("-o", "--output", required=True)
