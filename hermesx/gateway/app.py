"""The gateway's routes: the JSON API under ``/v1`` and the console at ``/`` (docs/DESIGN.md §13).

:func:`create_app` builds the Starlette application. Its route list is
:func:`api_routes` plus the console's files plus ``extra_routes`` — the
place for endpoints other parts add (the process's ``/metrics``). Every
handler runs the blocking cluster client in a worker thread; every failure
leaves as a problem document (:mod:`hermesx.gateway.problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.core.identity import GUID, TAD, validate_name
from hermesx.core.types import Hop
from hermesx.gateway import guards, idempotency
from hermesx.gateway.openapi import openapi_document
from hermesx.gateway.problems import Problem, problem_response
from hermesx.gateway.view import ClusterView
from hermesx.observe import metrics

__all__ = ["GatewaySettings", "api_routes", "create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

# Consoles (event streams) one gateway feeds at once.
MAX_SUBSCRIBERS = 64
# Threads for calls and actions (the rest share anyio's 40), and how many of them one
# atom may hold (docs/DESIGN.md §13).
CALL_THREADS = 64
MAX_CALLS_PER_ATOM = 16
# How long an event stream stays quiet before a keep-alive comment.
KEEPALIVE_S = 15.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """What the routes need to know besides the cluster."""

    max_body: int = 8 * 2**20
    body_timeout: float = 10.0
    call_timeout: float = 30.0
    token: str | None = None


class Feed:
    """Pushes the view's readings and events to every open event stream."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.subscribers: set[asyncio.Queue[str]] = set()
        self.last_state = ""
        self.last_event = 0

    def state_message(self) -> str:
        reading = self.view.reading
        state = {
            "nodes": [n.as_dict() for n in reading.nodes.values()],
            "atoms": sorted(
                (a.as_dict() for a in reading.atoms.values()),
                key=lambda a: (a["name"] is None, a["name"] or "", a["guid"]),
            ),
        }
        return json.dumps(state, sort_keys=True)

    def publish(self) -> None:
        """Send what changed since the last publication (readings a request made included)."""
        events = self.view.events_since(self.last_event)
        if events:
            self.last_event = events[-1]["seq"]
        messages = [f"event: change\ndata: {json.dumps(e)}\n\n" for e in events]
        state = self.state_message()
        if state != self.last_state:
            self.last_state = state
            messages.append(f"event: state\ndata: {state}\n\n")
        for queue in list(self.subscribers):
            for message in messages:
                try:
                    queue.put_nowait(message)
                except asyncio.QueueFull:
                    # A console that does not read: it reloads and gets the state anew.
                    self.subscribers.discard(queue)
                    break

    async def run(self) -> None:
        """Read the cluster every period while the gateway runs."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.view.refresh)
                self.publish()
            except HermesError as exc:
                log.info("reading the cluster failed: %s", exc)
            except Exception:
                log.exception("reading the cluster failed")
            await asyncio.sleep(self.view.period)


def _target(request: Request) -> str:
    target = str(request.path_params["target"])
    if not GUID.looks_like(target):
        validate_name(target, "atom name")
    return target


def _tad(tad: TAD | None) -> dict[str, Any] | None:
    return {"node": tad.node, "age": tad.age} if tad is not None else None


def _hop(hop: Hop) -> dict[str, Any]:
    return {"node": hop.node, "event": hop.event, "tad": _tad(hop.tad), "detail": hop.detail}


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes", "on")


def api_routes(
    view: ClusterView, feed: Feed, keys: idempotency.KeyStore, settings: GatewaySettings
) -> list[BaseRoute]:
    """The ``/v1`` routes over ``view``'s client; ``keys`` remembers Idempotency-Keys."""
    client = view.client

    def endpoint(handler: Handler, *, mutating: bool = False) -> Handler:
        async def run(request: Request) -> Response:
            try:
                guards.check_token(request, settings.token)
                if mutating:
                    guards.check_same_origin(request)
                return await handler(request)
            except (Problem, HermesError) as exc:
                return problem_response(exc)
            except Exception as exc:  # a bug: still a problem document, and a log for details
                log.exception("%s %s failed", request.method, request.url.path)
                return problem_response(Problem("internal", f"{type(exc).__name__}: {exc}"))

        return run

    def blocking(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(lambda: fn(*args))

    # Calls and actions wait on atoms and nodes up to their timeout: they run on threads
    # of their own, at most MAX_CALLS_PER_ATOM at once for one atom, so calls stuck on a
    # frozen node leave the other atoms' calls, names and the console their threads. An
    # atom is counted by its GUID, on the call's thread, whether it was named by its name
    # or its GUID; a call past the limit gives its thread back at once.
    call_threads = anyio.CapacityLimiter(CALL_THREADS)
    waiting: dict[str, int] = {}  # GUID -> calls of that atom running here
    waiting_lock = threading.Lock()

    def counted(target: str, fn: Callable[[], Any]) -> Any:
        guid = client.guid_of(target)
        with waiting_lock:
            count = waiting.get(guid, 0)
            if count >= MAX_CALLS_PER_ATOM:
                raise Problem(
                    "busy",
                    f"atom {target!r} has {count} calls waiting at this gateway; "
                    "refused, not run: try again later",
                )
            waiting[guid] = count + 1
        try:
            return fn()
        finally:
            with waiting_lock:
                if waiting[guid] <= 1:
                    del waiting[guid]
                else:
                    waiting[guid] -= 1

    async def calling(target: str, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(counted, target, fn, limiter=call_threads)

    async def read_json(request: Request) -> Any:
        body = await guards.read_body(request, settings.max_body, settings.body_timeout)
        return guards.parse_json(body)

    async def read_arguments(request: Request, method: str, keyed: bool) -> tuple[bytes, str]:
        """A call's arguments as msgpack, and their digest when ``keyed``.

        The parsed JSON value is dropped here, before the call waits for its
        atom: it can take ~25 times the body's bytes (``[{},{},…]``), so a few
        slow calls holding theirs would hold gigabytes (docs/DESIGN.md §13).
        """
        value = await read_json(request)
        return codec.pack(value), idempotency.arguments_digest(method, value) if keyed else ""

    async def invoke(request: Request) -> Response:
        target = _target(request)
        method = str(request.path_params["method"])
        key = request.headers.get("idempotency-key")
        if key is not None:
            idempotency.check_key(key)
        args, digest = await read_arguments(request, method, key is not None)
        timeout = settings.call_timeout
        if "timeout" in request.query_params:
            try:
                timeout = float(request.query_params["timeout"])
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= 300:
                raise Problem("configuration", "timeout must be more than 0 and at most 300 s")
        request_id = ""
        if key is not None:
            guid = await blocking(client.guid_of, target)
            await blocking(keys.claim, guid, key, digest)
            request_id = idempotency.request_id_for(key, digest)
        trace = _flag(request, "trace")
        outcome = await calling(
            target,
            lambda: client.invoke(
                target, method, args, request_id=request_id, trace=trace, timeout=timeout
            ),
        )
        data: dict[str, Any] = {
            "result": codec.msgpack_to_python(outcome.result),
            "guid": outcome.guid,
            "tad": _tad(outcome.tad),
        }
        if request_id:
            data["request_id"] = request_id
        if trace:
            data["trace"] = [_hop(h) for h in outcome.trace]
        return JSONResponse(data)

    async def action(request: Request) -> Response:
        target = _target(request)
        name = request.path_params["action"]
        # Only the node's name is kept from the body (not the parsed value: see read_arguments).
        body = await read_json(request)
        node = body.get("node") if isinstance(body, dict) else None
        del body
        if name == "migrate":
            if not isinstance(node, str):
                raise Problem("configuration", 'migrate needs a JSON body {"node": "NAME"}')
            validate_name(node, "node name")
            moved = await calling(target, lambda: client.migrate(target, node))
            return JSONResponse(
                {
                    "guid": moved.guid,
                    "tad": _tad(moved.tad),
                    "state_bytes": moved.state_bytes,
                    "held_ms": round(moved.held_ms, 3),
                    "total_ms": round(moved.total_ms, 3),
                }
            )
        if name == "passivate":
            last = await calling(target, lambda: client.passivate(target))
            return JSONResponse({"last_tad": _tad(last)})
        if name == "checkpoint":
            return JSONResponse(
                {"tad": _tad(await calling(target, lambda: client.checkpoint(target)))}
            )
        raise Problem("not_found", f"no action {name[:40]!r}: migrate, passivate or checkpoint")

    async def atoms(request: Request) -> Response:
        await blocking(view.read_fresh)
        return JSONResponse(json.loads(feed.state_message())["atoms"])

    async def atom(request: Request) -> Response:
        target = _target(request)
        row = await blocking(view.atom, target)
        data = row.as_dict()
        data["aliases"] = await blocking(view.aliases_of, row.guid)
        return JSONResponse(data)

    async def chain(request: Request) -> Response:
        return JSONResponse(await blocking(view.chain, _target(request)))

    async def nodes(request: Request) -> Response:
        await blocking(view.read_fresh)
        return JSONResponse([n.as_dict() for n in view.reading.nodes.values()])

    async def lookup(request: Request) -> Response:
        pattern = request.query_params.get("pattern")
        if not pattern:
            raise Problem("configuration", "lookup needs ?pattern=REGEX")
        scope = request.query_params.get("scope") or None
        every = _flag(request, "all")
        if scope is None:
            found = await blocking(lambda: client.lookup_names(pattern, all=every))
            return JSONResponse([{"name": n, "guid": g} for n, g in found])
        validate_name(scope, "alias scope")
        guids = await blocking(lambda: client.lookup(pattern, scope=scope, all=every))
        by_guid = {g: n for n, g in (await blocking(client.names)).items()}
        return JSONResponse([{"name": by_guid.get(g), "guid": g} for g in guids])

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def events(request: Request) -> Response:
        if len(feed.subscribers) >= MAX_SUBSCRIBERS:
            raise Problem("busy", f"this gateway feeds at most {MAX_SUBSCRIBERS} consoles")
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=256)
        feed.subscribers.add(queue)
        # What was published already; later events reach the queue.
        history = [e for e in view.events_since(0) if e["seq"] <= feed.last_event]
        first = [f"event: change\ndata: {json.dumps(e)}\n\n" for e in history]
        first.append(f"event: state\ndata: {feed.state_message()}\n\n")

        async def stream() -> AsyncIterator[str]:
            try:
                for message in first:
                    yield message
                while queue in feed.subscribers:
                    try:
                        yield await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
            finally:
                feed.subscribers.discard(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/v1/openapi.json", endpoint(openapi)),
        Route("/v1/nodes", endpoint(nodes)),
        Route("/v1/atoms", endpoint(atoms)),
        Route("/v1/lookup", endpoint(lookup)),
        Route("/v1/events", endpoint(events)),
        Route("/v1/atoms/{target}", endpoint(atom)),
        Route("/v1/atoms/{target}/chain", endpoint(chain)),
        Route(
            "/v1/atoms/{target}/actions/{action}",
            endpoint(action, mutating=True),
            methods=["POST"],
        ),
        Route("/v1/atoms/{target}/{method}", endpoint(invoke, mutating=True), methods=["POST"]),
    ]


_CONSOLE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}


def console_routes() -> list[BaseRoute]:
    """The console's few files, read once; no path from a request ever reaches the disk."""
    files = importlib.resources.files("hermesx.gateway") / "static"
    routes: list[BaseRoute] = []
    for path, (name, media) in _CONSOLE_FILES.items():
        content = (files / name).read_bytes()

        async def serve(request: Request, content: bytes = content, media: str = media) -> Response:
            return Response(
                content,
                media_type=media,
                headers={
                    "Cache-Control": "no-cache",
                    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff",
                },
            )

        routes.append(Route(path, serve))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes.append(Route("/favicon.ico", no_icon))
    return routes


def create_app(
    view: ClusterView,
    keys: idempotency.KeyStore,
    settings: GatewaySettings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The gateway's application over ``view``; ``extra_routes`` join its route list.

    ``on_ready`` is called once the first reading of the cluster is made:
    every change after it is an event.
    """
    feed = Feed(view)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await anyio.to_thread.run_sync(view.refresh)
        except HermesError as exc:
            log.warning("the first reading of the cluster failed: %s", exc)
        if on_ready is not None:
            on_ready()
        task = asyncio.create_task(feed.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def http_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return problem_response(
                Problem("not_allowed", f"{request.method} is not allowed on {request.url.path}")
            )
        return problem_response(Problem("not_found", f"no such path {request.url.path[:200]!r}"))

    async def metrics_page(request: Request) -> Response:
        body, media = metrics.exposition()
        return Response(body, media_type=media)

    routes = [
        *api_routes(view, feed, keys, settings),
        *console_routes(),
        Route("/metrics", metrics_page, methods=["GET"]),
        *extra_routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_problem},
    )
    app.add_middleware(_Measured)
    return app


class _Measured:
    """Counts and times every request by its route's template (never the path itself, whose
    names would make the metric's labels unbounded), docs/DESIGN.md §12."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            metrics.gateway_request(getattr(route, "path", "other"), status, started)
