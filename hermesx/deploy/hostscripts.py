"""The shell scripts `hermesx deploy` runs on a host, one per step (docs/DESIGN.md §8).

Every script is POSIX ``sh`` run as ``sh -s`` (:mod:`hermesx.deploy.remote`),
every value in it quoted with :func:`~hermesx.deploy.remote.quote`. The
layout under a host's install directory ``DIR``:

* ``DIR/releases/<release>/venv`` — one venv per bundle (:mod:`hermesx.deploy.bundle`);
  ``DIR/current`` points at the newest;
* ``DIR/tls`` — the host's certificates (no CA key);
* ``DIR/run/<part>.pid`` — the pid of every part started, written by the
  part's own shell before it becomes the part (``exec``), so a part that
  started is always one that ``deploy down`` finds and stops;
* ``DIR/logs/<part>.log`` — its output; ``DIR/<part>`` — its data.

A part is started with ``nohup setsid``: it survives the SSH session.
"""

from __future__ import annotations

from collections.abc import Sequence

from hermesx.deploy.bundle import ATOMS_DIR
from hermesx.deploy.remote import quote

__all__ = [
    "install_script",
    "probe_script",
    "start_script",
    "status_script",
    "stop_script",
]

# Shell functions every script that looks at parts uses. A pid file names a
# part of this install only while that process runs from this directory.
_FUNCTIONS = """
alive() {
  pid=$(cat "$D/run/$1.pid" 2>/dev/null) || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\\000' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$D/"
}
"""


def _prelude(directory: str) -> str:
    return f"D={quote(directory)}\n{_FUNCTIONS}"


def probe_script(directory: str, python: str, release: str) -> str:
    """Make the layout; print the Python version and whether the release is installed."""
    return (
        _prelude(directory)
        + 'mkdir -p "$D/run" "$D/logs" "$D/releases" "$D/tls" "$D/incoming"\n'
        + 'chmod 700 "$D" "$D/tls"\n'
        + f'{quote(python)} -c \'import sys; print("python", "%d.%d" % sys.version_info[:2])\'\n'
        + f'if [ -x "$D/releases/{release}/venv/bin/python" ]; then echo have; else echo need; fi\n'
    )


def install_script(directory: str, python: str, release: str, python_version: str) -> str:
    """Unpack the shipped bundle into a new venv of ``release``; point ``current`` at it."""
    site = f"venv/lib/python{python_version}/site-packages"
    return (
        _prelude(directory)
        + f"R={quote(release)}\n"
        + 'if [ ! -x "$D/releases/$R/venv/bin/python" ]; then\n'
        + '  rm -rf "$D/releases/$R.partial"\n'
        + '  mkdir -p "$D/releases/$R.partial"\n'
        + '  cd "$D/releases/$R.partial"\n'
        + f"  {quote(python)} -m venv --without-pip venv\n"
        + f'  tar -xf "$D/incoming/bundle-$R.tar" -C {site}\n'
        + f"  mv {site}/{ATOMS_DIR} atoms\n"
        + '  cd "$D/releases"\n'
        + '  mv "$R.partial" "$R"\n'
        + "fi\n"
        + '"$D/releases/$R/venv/bin/python" -c "import hermesx.cli.main, storesite, nameservice"\n'
        + 'rm -f "$D/incoming/bundle-$R.tar"\n'
        + 'ln -sfn "releases/$R" "$D/current"\n'
        + 'chmod 600 "$D"/tls/* 2>/dev/null || true\n'
        + "echo installed\n"
    )


def start_script(directory: str, parts: Sequence[tuple[str, Sequence[str], str]]) -> str:
    """Start each ``(part, argv, data_dir)`` not running yet; a new store gets ``--init``.

    ``data_dir`` is the part's store ("" for none): a storesite whose store
    does not exist yet is started with ``--init`` (only then).
    """
    lines = [_prelude(directory)]
    for part, argv, data_dir in parts:
        command = " ".join(quote(a) for a in argv)
        init = ""
        if data_dir:
            lines.append(f'if [ -d {quote(data_dir)} ]; then init=""; else init="--init"; fi')
            init = " $init"
        lines += [
            f"if alive {quote(part)}; then echo {quote(part)} running; else",
            f'  nohup setsid sh -c \'echo $$ > "$0"; exec "$@"\' "$D/run/"{quote(part)}.pid '
            f'{command}{init} >> "$D/logs/"{quote(part)}.log 2>&1 < /dev/null &',
            f"  echo {quote(part)} started",
            "fi",
        ]
    return "\n".join(lines) + "\n"


def stop_script(directory: str, parts: Sequence[str], signal_name: str, wait_s: float) -> str:
    """Stop ``parts`` (a name ending in ``-``, e.g. ``node-``, means all of that kind).

    Sends ``signal_name``, then SIGKILL after ``wait_s`` seconds. Pid files
    name every part ever started here, also by a failed ``deploy up``.
    """
    ticks = max(int(wait_s * 10), 1)
    patterns = " ".join(
        f'"$D/run/"{quote(p)}*.pid' if p.endswith("-") else f'"$D/run/"{quote(p)}.pid'
        for p in parts
    )
    return (
        _prelude(directory)
        + f"for pf in {patterns}; do\n"
        + '  [ -f "$pf" ] || continue\n'
        + '  part=$(basename "$pf" .pid)\n'
        + '  if alive "$part"; then\n'
        + '    pid=$(cat "$pf")\n'
        + f'    kill -{signal_name} "$pid" 2>/dev/null || true\n'
        + "    i=0\n"
        + f'    while kill -0 "$pid" 2>/dev/null && [ $i -lt {ticks} ]; do\n'
        + "      sleep 0.1; i=$((i+1))\n"
        + "    done\n"
        + '    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; echo "$part killed"; '
        + 'else echo "$part stopped"; fi\n'
        + "  fi\n"
        + '  rm -f "$pf"\n'
        + "done\n"
    )


def status_script(directory: str) -> str:
    """One line per part: ``<part> <pid> running|stopped``, and the current release."""
    return (
        _prelude(directory)
        + 'echo "release $(basename "$(readlink "$D/current" 2>/dev/null || echo none)")"\n'
        + 'for pf in "$D"/run/*.pid; do\n'
        + '  [ -f "$pf" ] || continue\n'
        + '  part=$(basename "$pf" .pid)\n'
        + '  if alive "$part"; then echo "$part $(cat "$pf") running"; '
        + 'else echo "$part - stopped"; fi\n'
        + "done\n"
    )
