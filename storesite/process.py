"""The storesite process: the store, the name service and the gRPC server together.

See docs/DESIGN.md §8.

:func:`serve` is the process main behind ``hermesx storesite serve`` and
``python -m storesite``: it opens the data dir, joins the name service as
the ephemeral ``storesites/<id>`` of a session with the timeout asked for
(the storesite's registration lasts that long past its death), registers
again after that session is lost, watches the nodes for recovery and blocks
until SIGTERM / SIGINT.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable

from hermesx.core.identity import validate_name
from hermesx.observe import metrics
from hermesx.rpc.callserver import CallServer
from hermesx.rpc.security import zk_auth, zk_readers, zk_tls
from hermesx.rpc.storesite_batch import CALL_KINDS
from hermesx.rpc.storesite_client import CALL_ADDRESS
from hermesx.rpc.wire import TLSIdentity, set_process_tls
from nameservice import NameService, NameServiceError, NameTakenError, ZooKeeperTLS
from storesite.calls import CALL_KINDS_SERVED, serve_calls
from storesite.calls import call_listen_address as call_address
from storesite.directory import NameServiceDirectory, naming_error
from storesite.server import StoresiteServer
from storesite.service import Storesite
from storesite.store import DEFAULT_MAX_CHECKPOINT_BYTES, AtomStore

__all__ = ["DEFAULT_SESSION_TIMEOUT", "serve"]

log = logging.getLogger(__name__)

# Seconds to wait for a crashed predecessor's registration to expire.
REGISTER_PATIENCE = 15.0
# The storesite's name-service session timeout unless told otherwise.
DEFAULT_SESSION_TIMEOUT = 4.0


def serve(
    sid: str,
    listen: str,
    data_dir: pathlib.Path,
    zk: str,
    cluster: str,
    *,
    max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    tls_dir: pathlib.Path | None = None,
    init: bool = False,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    metrics_listen: str = "off",
    advertise: str = "",
    call_listen: str = "auto",
) -> None:
    """Run storesite ``sid`` until SIGTERM / SIGINT (or ``stop`` is set).

    ``ready`` is called with the bound address once the storesite is
    registered in the name service and watching the nodes. The store in
    ``data_dir`` must exist and be whole unless ``init`` asks for a new one
    (see :class:`AtomStore`); it is checked before anything joins the cluster.
    ``session_timeout`` (seconds) is that of the storesite's name-service
    session: how long its registration outlives the process. ``metrics_listen``
    is where its Prometheus metrics are served (:func:`hermesx.observe.metrics.serve_metrics`).
    ``advertise`` (``HOST[:PORT]``) is the address registered for peers when it is not the
    listen address (:func:`hermesx.core.addresses.advertised_address`). ``call_listen``
    is where the call channel for checkpoints listens (:func:`storesite.calls.call_listen_address`;
    ``off``: checkpoints over gRPC only); its address is registered as ``call``.
    """
    validate_name(sid, "storesite id")
    call_address(call_listen, listen)  # a bad --call-listen fails before anything starts
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # A fault no check foresaw (a store file cut while mapped: SIGBUS) at
        # least leaves a traceback in the log instead of a silent death.
        with contextlib.suppress(OSError, ValueError, AttributeError, RuntimeError):
            faulthandler.enable()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    tls = TLSIdentity(tls_dir, sid, cluster) if tls_dir is not None else None
    set_process_tls(tls)
    store = AtomStore(sid, data_dir, init=init, max_checkpoint_bytes=max_checkpoint_bytes)
    try:
        names = NameService(
            zk,
            cluster,
            session_timeout=session_timeout,
            auth=zk_auth(tls_dir) if tls_dir is not None else None,
            readers=zk_readers(tls_dir) if tls_dir is not None else (),
            tls=_zk_tls(tls_dir, sid),
        )
    except NameServiceError as exc:
        store.close()
        raise naming_error(exc, f"storesite {sid} cannot use cluster {cluster!r}") from exc
    site = Storesite(store, NameServiceDirectory(names))
    server = StoresiteServer(site, listen, tls=tls, advertise=advertise)
    endpoint: metrics.MetricsEndpoint | None = None
    calls: CallServer | None = None
    record: dict[str, object] = {"pid": os.getpid()}
    try:
        try:
            names.start()
            address = server.start()
            where = call_address(call_listen, listen)
            if where is not None:
                calls, record[CALL_ADDRESS] = serve_calls(
                    site,
                    where,
                    auto=call_listen == "auto",
                    workers=server.pool,
                    tls=tls,
                    advertise=advertise,
                )
                record[CALL_KINDS] = CALL_KINDS_SERVED
            endpoint = metrics.serve_metrics(metrics_listen, address.rpartition(":")[0])
            metrics.watch_storesite(lambda: _count_atoms(store))
            _register(names, sid, address, record, stop)
            names.add_state_listener(_reregister_after_loss(names, sid, address, record, stop))
            names.watch_nodes(site.on_nodes)
        except NameServiceError as exc:
            raise naming_error(
                exc, f"storesite {sid} cannot join the name service at {zk} (cluster {cluster})"
            ) from exc
        log.info(
            "storesite %s serving %s, checkpoints on %s (cluster %s) from %s",
            sid,
            address,
            record.get(CALL_ADDRESS) or "gRPC only",
            cluster,
            data_dir,
        )
        if ready is not None:
            ready(address)
        stop.wait()
        log.info("storesite %s stopping", sid)
    finally:
        if endpoint is not None:
            endpoint.close()
        if calls is not None:
            calls.stop()
        server.stop()
        site.close()
        names.close()
        store.close()


def _zk_tls(tls_dir: pathlib.Path | None, sid: str) -> ZooKeeperTLS | None:
    files = zk_tls(tls_dir, sid) if tls_dir is not None else None
    return ZooKeeperTLS(*files) if files is not None else None


def _register(
    names: NameService, sid: str, address: str, record: dict[str, object], stop: threading.Event
) -> None:
    """Register ``storesites/<sid>``, waiting out the entry of our own previous run.

    A storesite restarted right after a crash finds its old ephemeral entry
    until that session expires (a few seconds); only a live other process
    keeps it longer.
    """
    deadline = time.monotonic() + REGISTER_PATIENCE
    while True:
        try:
            names.register_storesite(sid, address, data={**record, **metrics.registration()})
            return
        except NameTakenError:
            if time.monotonic() > deadline or stop.is_set():
                raise
            log.info("storesite id %s is still registered; waiting for it to expire", sid)
            stop.wait(0.5)


def _reregister_after_loss(
    names: NameService, sid: str, address: str, record: dict[str, object], stop: threading.Event
) -> Callable[[str], None]:
    """A state listener that registers again once a new session replaces a lost one."""
    lost = threading.Event()

    def again() -> None:
        try:
            _register(names, sid, address, record, stop)
            log.info("storesite %s registered again after its session was lost", sid)
        except NameServiceError as exc:
            log.error("storesite %s could not register again: %s", sid, exc)

    def listener(state: str) -> None:
        if state == "lost":
            lost.set()
        elif state == "connected" and lost.is_set():
            lost.clear()
            # Not on the name service's delivery thread: registering may wait.
            threading.Thread(target=again, name=f"register-{sid}", daemon=True).start()

    return listener


def _count_atoms(store: AtomStore) -> tuple[int, int]:
    """(active, dormant) atoms whose home this is, for the metrics."""
    active = dormant = 0
    for state in store.atoms():
        if state.forwarded_to:
            continue
        if state.dormant:
            dormant += 1
        else:
            active += 1
    return active, dormant
