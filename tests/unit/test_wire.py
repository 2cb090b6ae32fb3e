"""The generated wire code is fresh, and errors keep their kind across gRPC."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import grpc

from hermesx.core.errors import MethodError, UnreachableError
from hermesx.rpc.status import error_from_rpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), str(tmp_path)], check=True
    )
    for fresh in sorted(tmp_path.glob("*_pb2*.py*")):
        committed = ROOT / "hermesx" / "rpc" / "proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{fresh.name} is stale: run make proto"


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_kind_survives_the_status_details() -> None:
    err = error_from_rpc(_FakeRpcError(grpc.StatusCode.UNKNOWN, "method: no method 'x'"), "node n1")
    assert isinstance(err, MethodError)
    assert str(err) == "no method 'x'"


def test_transport_failure_names_the_peer() -> None:
    err = error_from_rpc(
        _FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"), "node n9"
    )
    assert isinstance(err, UnreachableError)
    assert "node n9" in str(err)
