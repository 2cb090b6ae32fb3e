"""Bad input through the command line: one line `error: ...`, a non-zero exit, JSON with --json.

docs/DESIGN.md §8: exit status 0 on success, non-zero with a one-line ``error: …``
on failure. One case of each verb runs ``python -m hermesx`` as a user would; the
others call the command's entry point in this process (same arguments, environment
and captured output), against the same real cluster.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pytest
import wasmtime
from cli_here import run_hermesx_here

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster
from hermesx.testing.cli import run_hermesx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Hostile module files for `hermesx create` / `hermesx run`."""
    root = tmp_path_factory.mktemp("bad-modules")
    base = (
        '(memory (export "memory") {pages})'
        ' (func (export "hx_abi_version") (result i32) (i32.const 1))'
        ' (func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))'
        ' (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) (i32.const 0))'
    )
    modules = {
        "empty": b"",
        "text": b"this is not a module\n",
        "hugemem": wasmtime.wat2wasm(f"(module {base.format(pages=4000)})"),
        "start-traps": wasmtime.wat2wasm(
            f"(module {base.format(pages=1)} (func $s (unreachable)) (start $s))"
        ),
        "env-import": wasmtime.wat2wasm(
            f'(module (import "env" "exit" (func (param i32))) {base.format(pages=1)})'
        ),
    }
    paths = {}
    for name, data in modules.items():
        path = root / f"{name}.wasm"
        path.write_bytes(bytes(data))
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def resident(cluster: LocalCluster, atoms: dict[str, pathlib.Path]) -> Iterator[str]:
    """Atoms the cases talk to: a counter and a trap atom, on n1."""
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="cli-counter", on="n1")
        client.create(atoms["trap"], name="cli-trap", on="n1")
    yield "cli-counter"


# (argv with {placeholders}, expected kind, a word the message must hold)
CASES: dict[str, tuple[list[str], str, str]] = {
    "create-empty-file": (["create", "{empty}", "--on", "n1"], "bad_module", "magic"),
    "create-text-file": (["create", "{text}", "--on", "n1"], "bad_module", "magic"),
    "create-missing-file": (["create", "{missing}"], "configuration", "missing.wasm"),
    "create-huge-memory": (["create", "{hugemem}", "--on", "n2"], "memory", "cap"),
    "create-start-traps": (["create", "{start-traps}", "--on", "n2"], "bad_module", "start"),
    "create-env-import": (["create", "{env-import}", "--on", "n3"], "bad_module", "env.exit"),
    "create-no-hx_invoke": (["create", "{noexport}", "--on", "n3"], "bad_module", "hx_invoke"),
    "create-unknown-node": (["create", "{counter}", "--on", "n9"], "unreachable", "n9"),
    "create-bad-name": (["create", "{counter}", "--name", "a/b"], "invalid_name", "a/b"),
    "create-bad-init-json": (["create", "{counter}", "--init", "{{nope"], "configuration", "JSON"),
    "create-checkpoint-every-0s": (
        ["create", "{counter}", "--checkpoint", "every:0s"],
        "configuration",
        "every:0",
    ),
    "create-checkpoint-every-0": (
        ["create", "{counter}", "--checkpoint", "every:0"],
        "configuration",
        "every:0",
    ),
    "create-checkpoint-every-inf": (
        ["create", "{counter}", "--checkpoint", "every:infs"],
        "configuration",
        "finite",
    ),
    "create-checkpoint-every-year": (
        ["create", "{counter}", "--checkpoint", "every:31536000s"],
        "configuration",
        "limit",
    ),
    "create-idle-passivate-negative": (
        ["create", "{counter}", "--idle-passivate", "-1"],
        "configuration",
        "idle passivation",
    ),
    "create-idle-passivate-nan": (
        ["create", "{counter}", "--idle-passivate", "nan"],
        "configuration",
        "finite",
    ),
    "create-idle-passivate-huge": (
        ["create", "{counter}", "--idle-passivate", "1e30"],
        "configuration",
        "limit",
    ),
    "create-reply-window-zero": (
        ["create", "{counter}", "--reply-window", "0"],
        "configuration",
        "reply window",
    ),
    "create-reply-window-junk": (
        ["create", "{counter}", "--reply-window", "lots"],
        "configuration",
        "lots",
    ),
    "invoke-unknown-atom": (["invoke", "no-such-atom", "get"], "not_found", "no-such-atom"),
    "invoke-unknown-guid": (["invoke", "s1:" + "e" * 32, "get"], "not_found", "s1:"),
    "invoke-unknown-method": (["invoke", "cli-counter", "frobnicate"], "method", "frobnicate"),
    "invoke-bad-json": (["invoke", "cli-counter", "incr", "{{nope"], "configuration", "JSON"),
    "invoke-deep-json": (["invoke", "cli-counter", "incr", "{deep}"], "configuration", "deep"),
    "invoke-wrong-type": (["invoke", "cli-counter", "incr", '"five"'], "method", "incr"),
    "invoke-trap": (["invoke", "cli-trap", "boom"], "trap", "boom"),
    "invoke-bad-name": (["invoke", "bad/name", "get"], "invalid_name", "bad/name"),
    "lookup-invalid-regex": (["lookup", "("], "invalid_pattern", "("),
    "lookup-10k-pattern": (["lookup", "{long}"], "invalid_pattern", "longer"),
    "migrate-unknown-node": (["migrate", "cli-counter", "n9"], "not_found", "n9"),
    "locate-unknown-atom": (["locate", "no-such-atom"], "not_found", "no-such-atom"),
    "run-empty-file": (["run", "{empty}", "get"], "bad_module", "magic"),
    "run-trap": (["run", "{trap}", "boom"], "trap", "boom"),
}

# One case of each verb runs as its own `python -m hermesx` process.
IN_A_PROCESS = {
    "create-start-traps",
    "invoke-trap",
    "lookup-invalid-regex",
    "migrate-unknown-node",
    "locate-unknown-atom",
    "run-empty-file",
}


def _argv(
    template: list[str], files: dict[str, pathlib.Path], atoms: dict[str, pathlib.Path]
) -> list[str]:
    values = {name: str(path) for name, path in {**atoms, **files}.items()}
    values["missing"] = str(next(iter(files.values())).parent / "missing.wasm")
    values["deep"] = "[" * 60_000 + "]" * 60_000
    values["long"] = "a" * 10_240
    return [part.format(**values) for part in template]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_a_json_error(
    env: dict[str, str],
    files: dict[str, pathlib.Path],
    atoms: dict[str, pathlib.Path],
    resident: str,
    case: str,
) -> None:
    template, kind, word = CASES[case]
    run = run_hermesx if case in IN_A_PROCESS else run_hermesx_here
    proc = run(env, *_argv(template, files, atoms), "--json", "-q")
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert word in lines[0]
    reply = json.loads(proc.stdout)
    assert isinstance(reply, dict) and reply["error"] == lines[0].removeprefix("error: ")
    if kind:
        assert reply["kind"] == kind, reply


def test_without_json_stdout_stays_empty_on_failure(
    env: dict[str, str], resident: str, files: dict[str, pathlib.Path]
) -> None:
    proc = run_hermesx(env, "create", str(files["empty"]), "--on", "n1")
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_the_cluster_still_answers_after_the_bad_input(env: dict[str, str], resident: str) -> None:
    hostile = run_hermesx(env, "lookup", "(a*)*b", "--all", "--json")
    assert hostile.returncode == 0, hostile.stderr
    assert json.loads(hostile.stdout) == []
    proc = run_hermesx(env, "invoke", resident, "incr", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] >= 3
