"""Regenerate hermesx/rpc/proto/ from protos/*.proto (run: python protos/generate.py [OUTDIR])."""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def generate(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proto_dir = ROOT / "protos"
    for proto in sorted(proto_dir.glob("*.proto")):
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(proto),
            ]
        )
        if code != 0:
            raise SystemExit(f"error: protoc failed on {proto.name}")
        # grpc_tools writes a top-level import; make it package-relative.
        stem = proto.stem
        grpc_file = out / f"{stem}_pb2_grpc.py"
        text = grpc_file.read_text()
        grpc_file.write_text(text.replace(f"import {stem}_pb2 as", f"from . import {stem}_pb2 as"))


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hermesx" / "rpc" / "proto")
