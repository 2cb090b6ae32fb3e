"""One ZooKeeper session of a name-service client: connecting, calls, states (docs/DESIGN.md §7).

:class:`Session` owns the kazoo client. Kazoo's synchronous calls block
forever without quorum, so every call goes through :meth:`Session.call`:
``*_async(...).get(timeout)``, a lost connection retried until the
deadline, and kazoo's errors translated into the name service's own
(:class:`NoQuorumError` after ``timeout`` seconds, :class:`NotAuthorizedError`
for an ACL refusal). The session's state (``connected``, ``suspended``,
``lost``) is followed from kazoo's listener; state listeners and every other
piece of work the client hands over (membership watchers) run on one worker
thread of ours, never kazoo's, so they may call back into the client.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL

from nameservice.errors import NameServiceError, NoQuorumError, NotAuthorizedError

__all__ = ["RETRYABLE", "Session", "ZooKeeperTLS"]

log = logging.getLogger(__name__)

# Errors after which a call may be sent again on the same (or a new) session.
RETRYABLE = (ConnectionLoss, SessionExpiredError)


@dataclass(frozen=True, slots=True)
class ZooKeeperTLS:
    """TLS to ZooKeeper's secure client port: the CA to trust, the certificate to show.

    The server requires a client certificate of the cluster's CA and the
    client verifies the server's; host names are not checked (servers are
    dialled by address; what authenticates them is the CA's signature).
    """

    ca: str
    certfile: str
    keyfile: str

    def kazoo_options(self) -> dict[str, Any]:
        return {
            "use_ssl": True,
            "verify_certs": True,
            "ca": self.ca,
            "certfile": self.certfile,
            "keyfile": self.keyfile,
        }


class Session:
    """The kazoo client of one name-service client, its state and its worker thread.

    ``on_state(state)`` runs on kazoo's connection thread under :attr:`lock`
    whenever the state changes (it must not block); ``on_connected()`` runs on
    our worker when a connection is made, before the state listeners.
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        timeout: float,
        session_timeout: float,
        auth: tuple[str, str] | None,
        acl: list[ACL] | None,
        on_state: Callable[[str], None],
        on_connected: Callable[[], None],
        tls: ZooKeeperTLS | None = None,
    ) -> None:
        self.hosts = hosts
        self.tls = tls
        self.cluster = cluster
        self.timeout = timeout
        self.session_timeout = session_timeout
        self.auth = auth
        self.acl = acl
        self._on_state = on_state
        self._on_connected = on_connected
        self.client: KazooClient | None = None
        self.lock = threading.Lock()
        # Notified when the state changes or pending work is done.
        self.current = threading.Condition(self.lock)
        self.state = "lost"
        # Work queued for the worker that the caches wait for (under lock).
        self.pending = 0
        self._state_listeners: list[Callable[[str], None]] = []
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    def connect(self) -> KazooClient:
        """Start the session; NoQuorumError when no server answers within ``timeout``."""
        client = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout,
            # Reconnect quickly after an outage instead of backing off to 60 s.
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
            default_acl=self.acl,
            # Sent again by kazoo on every reconnection.
            auth_data=[("digest", f"{self.auth[0]}:{self.auth[1]}")] if self.auth else None,
            **(self.tls.kazoo_options() if self.tls is not None else {}),
        )
        client.add_listener(self._on_kazoo_state)
        self._worker = threading.Thread(
            target=self._run_worker, name=f"nameservice-{self.cluster}", daemon=True
        )
        self._worker.start()
        connected = client.start_async()
        connected.wait(self.timeout)
        if not client.connected:
            self._shutdown_client(client)
            self._stop_worker()
            raise NoQuorumError(
                f"name service at {self.hosts} did not answer within {self.timeout:g}s"
            )
        self.client = client
        self.state = "connected"
        return client

    def close(self) -> None:
        """End the session: its ephemeral znodes vanish at once."""
        client, self.client = self.client, None
        if client is not None:
            self._shutdown_client(client)
        self._stop_worker()

    def round_trip(self, timeout: float, path: str) -> str | None:
        """One request on ``path`` answered within ``timeout``; its session (hex), or None."""
        client = self.client
        if client is None:
            return None
        before = client.client_id
        if before is None:
            return None
        try:
            client.exists_async(path).get(timeout=timeout)
        except Exception:  # any failure: no proof of a live session
            return None
        after = client.client_id
        if after is None or after[0] != before[0]:
            return None
        return f"{before[0]:016x}"

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        self._state_listeners.append(callback)

    def is_current(self) -> bool:
        """Connected and no work the caches wait for is queued. Caller holds :attr:`lock`."""
        return self.state == "connected" and self.pending == 0

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` on our worker thread."""
        self._work.put(task)

    # ------------------------------------------------------------------ calls

    def require_client(self) -> KazooClient:
        client = self.client
        if client is None:
            raise NoQuorumError(
                f"name service client for {self.hosts} (cluster {self.cluster}) is not started"
            )
        return client

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one kazoo ``*_async`` call, waiting at most ``timeout`` seconds in all.

        A lost connection is retried until the deadline: creates and deletes
        may then meet their own earlier effect, which callers accept.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.wait(what, method(*args, **kwargs), deadline)
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise self._no_quorum(what) from exc
                time.sleep(0.05)

    def wait(self, what: str, pending: Any, deadline: float) -> Any:
        """The answer of an async kazoo call, translated; ConnectionLoss passes for a retry."""
        try:
            return pending.get(timeout=max(0.0, deadline - time.monotonic()))
        except KazooTimeoutError as exc:
            raise self._no_quorum(what) from exc
        except ConnectionClosedError as exc:
            raise self._no_quorum(what) from exc
        except (NoNodeError, NodeExistsError, NotEmptyError, *RETRYABLE):
            raise
        except NoAuthError as exc:
            raise NotAuthorizedError(
                f"name service at {self.hosts} refused to {what}: cluster {self.cluster} "
                "is protected and this client "
                + ("has another secret" if self.auth else "has no secret")
            ) from exc
        except KazooException as exc:
            raise NameServiceError(
                f"name service at {self.hosts} failed to {what}: {exc!r}"
            ) from exc

    def _no_quorum(self, what: str) -> NoQuorumError:
        return NoQuorumError(
            f"name service at {self.hosts} did not answer within {self.timeout:g}s ({what})"
        )

    # ------------------------------------------------------ state and worker

    def _on_kazoo_state(self, state: str) -> None:
        # Runs on kazoo's connection thread: record and hand over, never block.
        name = {
            KazooState.CONNECTED: "connected",
            KazooState.SUSPENDED: "suspended",
            KazooState.LOST: "lost",
        }.get(state, "lost")
        with self.lock:
            self.state = name
            self._on_state(name)
            self.current.notify_all()
        log.info("name service session for cluster %s is %s", self.cluster, name)
        self._work.put(lambda: self._announce_state(name))

    def _announce_state(self, state: str) -> None:
        if state == "connected":
            self._on_connected()
        for callback in list(self._state_listeners):
            try:
                callback(state)
            except Exception:
                log.exception("state listener of cluster %s failed", self.cluster)

    def _run_worker(self) -> None:
        while True:
            task = self._work.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                log.exception("name service worker of cluster %s failed", self.cluster)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._work.put(None)
        if worker is not threading.current_thread():
            worker.join(timeout=self.timeout)

    def _shutdown_client(self, client: KazooClient) -> None:
        try:
            client.stop()
            client.close()
        except KazooException as exc:
            log.debug("closing name service client for %s: %s", self.hosts, exc)
