"""``python -m storesite``: run one storesite process (docs/DESIGN.md §8).

The same as ``hermesx storesite serve``; tests start storesites this way.
Prints ``storesite <id> listening on <HOST:PORT>`` once it serves.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

from hermesx.core.errors import HermesError
from hermesx.core.files import PRIVATE_UMASK
from storesite.process import DEFAULT_SESSION_TIMEOUT, serve
from storesite.store import DEFAULT_MAX_CHECKPOINT_BYTES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storesite", description=__doc__)
    parser.add_argument("--id", required=True, help="storesite id (the home part of GUIDs)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT, port 0 = any")
    parser.add_argument(
        "--advertise", default="", help="HOST[:PORT] peers dial (default: the listen address)"
    )
    parser.add_argument(
        "--call-listen", default="auto", help="HOST:PORT of the call channel, auto or off"
    )
    parser.add_argument("--data", required=True, type=pathlib.Path, help="data directory")
    parser.add_argument("--zk", default=os.environ.get("HERMESX_ZK", "127.0.0.1:2181"))
    parser.add_argument("--cluster", default=os.environ.get("HERMESX_CLUSTER", "local"))
    parser.add_argument("--max-checkpoint-bytes", type=int, default=DEFAULT_MAX_CHECKPOINT_BYTES)
    parser.add_argument("--tls", type=pathlib.Path, help="cluster certificate directory")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        help="seconds the name-service session (and so the registration) outlives the process",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="create a new store when the data dir has none (set a damaged one aside)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(address: str) -> None:
        print(f"storesite {args.id} listening on {address}", flush=True)

    # Every atom's state passes through this process's files: the user's alone.
    os.umask(PRIVATE_UMASK)

    try:
        serve(
            args.id,
            args.listen,
            args.data,
            args.zk,
            args.cluster,
            max_checkpoint_bytes=args.max_checkpoint_bytes,
            ready=ready,
            tls_dir=args.tls,
            init=args.init,
            session_timeout=args.session_timeout,
            advertise=args.advertise,
            call_listen=args.call_listen,
        )
    except HermesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
