"""Build atoms from C to WebAssembly (docs/DESIGN.md §3, §8 ``hermesx build``).

Atoms are compiled with the ``ziglang`` PyPI package's clang for
``wasm32-freestanding``: no libc, a 64 KiB stack (Zig's 1 MiB default would
make every snapshot large), mutable globals, no debug info. The SDK in
``atoms/`` (``hx.h``, ``hx_msgpack.h``) is always on the include path; it marks
the ABI exports with ``export_name``, and sources that define ABI functions
without the SDK get ``--export`` for each one they define.

``build_examples`` builds the SDK's example atoms into ``atoms/build/`` and any
``examples/<demo>/atoms/*.c`` into ``examples/<demo>/build/``, skipping
outputs newer than their sources. ``python -m hermesx.runtime.build`` is the command
line for both.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hermesx.core.errors import ConfigurationError
from hermesx.runtime.native import crossing_module

__all__ = ["ABI_EXPORTS", "SDK_DIR", "build_atom", "build_examples", "main"]

log = logging.getLogger(__name__)

ROOT_DIR = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT_DIR / "atoms"
EXAMPLES_DIR = ROOT_DIR / "examples"

# Exports atoms/ABI.md defines; `memory` is exported by the linker itself.
ABI_EXPORTS = (
    "hx_abi_version",
    "hx_alloc",
    "hx_invoke",
    "hx_init",
    "hx_interrupt",
    "hx_future",
    "hx_main",
    "hx_inbox",
)

_COMPILE_FLAGS = (
    "--target=wasm32-freestanding",
    "-nostdlib",
    "-O2",
    "-g0",
    "-mmutable-globals",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",
    # Snapshots read every mutable global; exporting the stack pointer here
    # spares the runtime's rewrite for the one global every C atom has.
    "-Wl,--export=__stack_pointer",
)

# The first run of the compiler fills Zig's cache; later builds take ~0.1 s.
_COMPILE_TIMEOUT_S = 600.0

# A function definition (not a declaration) of an ABI export, at line start.
_DEFINITION = re.compile(
    r"^[ \t]*(?:[A-Za-z_][A-Za-z0-9_]*[ \t*]+)+("
    + "|".join(ABI_EXPORTS)
    + r")[ \t]*\([^;{]*\)\s*\{",
    re.MULTILINE,
)


def _exports_defined(source: str) -> list[str]:
    """ABI functions the source defines itself, without the SDK's macros."""
    found = dict.fromkeys(m.group(1) for m in _DEFINITION.finditer(source))
    return list(found)


def _first_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line
    return lines[0] if lines else "no compiler output"


def build_atom(
    src: Path,
    out: Path,
    *,
    include_dirs: Sequence[Path] = (),
) -> Path:
    """Compile one C atom to ``out`` and return ``out``.

    Raises ConfigurationError when the source is missing, the compiler is not
    installed, or compilation fails (with the compiler's first error line).
    """
    src = Path(src)
    out = Path(out)
    try:
        source = src.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigurationError(f"atom source {src} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"atom source {src} cannot be read: {exc}") from exc

    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ziglang", "cc", *_COMPILE_FLAGS]
    cmd += [f"-Wl,--export={name}" for name in _exports_defined(source)]
    cmd += [f"-I{d}" for d in (SDK_DIR, *include_dirs)]
    cmd += [str(src), "-o", str(out)]
    log.debug("building atom %s: %s", src, " ".join(cmd))
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigurationError(
            f"cannot build atom {src}: compiler ran over {_COMPILE_TIMEOUT_S:.0f} s"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(
            f"cannot build atom {src}: cannot run the compiler: {exc}"
        ) from exc
    if done.returncode != 0:
        output = done.stderr + done.stdout
        if "No module named ziglang" in output:
            raise ConfigurationError(
                f"cannot build atom {src}: the ziglang package is not installed "
                "(pip install ziglang)"
            )
        raise ConfigurationError(f"cannot build atom {src}: {_first_error_line(output)}")
    log.info("built atom %s -> %s in %.2f s", src.name, out, time.perf_counter() - started)
    return out


def _inputs_mtime(src: Path) -> float:
    """Newest modification time among the source and the headers it may use."""
    headers = [*SDK_DIR.glob("*.h"), *src.parent.glob("*.h")]
    return max(p.stat().st_mtime for p in [src, *headers])


def _example_sources(out_dir: Path | None) -> list[tuple[Path, Path, list[Path]]]:
    """(source, output, extra include dirs) for every atom build_examples makes."""
    jobs: list[tuple[Path, Path, list[Path]]] = []
    sdk_out = out_dir if out_dir is not None else SDK_DIR / "build"
    for src in sorted(SDK_DIR.glob("*.c")):
        jobs.append((src, sdk_out / f"{src.stem}.wasm", []))
    if EXAMPLES_DIR.is_dir():
        for src in sorted(EXAMPLES_DIR.glob("**/atoms/*.c")):
            demo_dir = src.parent.parent
            demo = demo_dir.relative_to(EXAMPLES_DIR)
            target = out_dir / demo if out_dir is not None else demo_dir / "build"
            jobs.append((src, target / f"{src.stem}.wasm", [src.parent]))
    return jobs


def build_examples(out_dir: Path | None = None, *, quiet: bool = False) -> list[Path]:
    """Build every example atom that is missing or older than its sources.

    Returns the paths of all example modules, built now or already up to date.
    """
    outputs: list[Path] = []
    for src, out, includes in _example_sources(out_dir):
        if out.exists() and out.stat().st_mtime >= _inputs_mtime(src):
            log.debug("atom %s is up to date", out)
        else:
            build_atom(src, out, include_dirs=includes)
            if not quiet:
                print(f"built {out}")
        outputs.append(out)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hermesx.runtime.build",
        description="Build hermesx atoms from C to WebAssembly.",
    )
    parser.add_argument("src", nargs="?", type=Path, help="atom source (.c)")
    parser.add_argument("-o", "--output", type=Path, help="output module (.wasm)")
    parser.add_argument("-I", dest="include", type=Path, action="append", default=[])
    parser.add_argument("--examples", action="store_true", help="build the example atoms")
    parser.add_argument("--out-dir", type=Path, help="with --examples: where modules go")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.examples:
            if args.src is not None:
                parser.error("give either --examples or SRC, not both")
            build_examples(args.out_dir, quiet=args.quiet)
            # The runtime's C crossing too, so that no first atom waits for its build.
            crossing = crossing_module()
            if not args.quiet:
                print(f"runtime's C crossing: {crossing.__file__ if crossing else 'unavailable'}")
            return 0
        if args.src is None:
            parser.error("SRC or --examples is required")
        out = args.output if args.output is not None else args.src.with_suffix(".wasm")
        build_atom(args.src, out, include_dirs=args.include)
        if not args.quiet:
            print(out)
        return 0
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
