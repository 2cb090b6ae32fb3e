"""What the gateway refuses before it touches the cluster (docs/DESIGN.md §13).

* a body over the limit (413, ``too_large``), also when sent without a
  length, and one that takes too long to arrive (408, ``slow_body``): a
  client sending a byte a second holds one connection for the body timeout,
  then is answered and dropped;
* a JSON body that does not parse (400, ``bad_json``);
* a mutating request from another site (403, ``cross_site``): browsers send
  ``Sec-Fetch-Site`` and ``Origin``, and a POST whose ``Sec-Fetch-Site`` is
  ``cross-site`` or ``same-site``, or whose ``Origin`` names another host
  and port than the request's ``Host``, is refused; programs (curl) send
  neither and pass;
* without the bearer token, when the gateway has one (401, ``unauthorized``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from starlette.requests import Request

from hermesx.gateway.problems import Problem

__all__ = ["check_same_origin", "check_token", "parse_json", "read_body"]


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request's body, at most ``limit`` bytes, all of it within ``timeout`` seconds."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise Problem("bad_json", f"Content-Length {length[:20]!r} is not a number") from None
        if declared > limit:
            raise Problem(
                "too_large", f"a body of {declared} bytes is over the gateway's {limit} bytes"
            )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Problem("too_large", f"the body is over the gateway's {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(
            "slow_body", f"the body did not arrive within {timeout:g} s ({size} bytes came)"
        ) from None
    return b"".join(chunks)


def parse_json(body: bytes, what: str = "body") -> Any:
    """The JSON value of ``body``; an empty body is null."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem("bad_json", f"the {what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise Problem("bad_json", f"the {what} nests too deeply to be read as JSON") from None


def check_same_origin(request: Request) -> None:
    """Refuse a mutating request a browser sent from another site (CSRF)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Problem("cross_site", f"a {site} request may not change the cluster")
    origin = request.headers.get("origin")
    if origin is not None:
        # Host and port only: behind a proxy ending TLS the gateway itself speaks plain HTTP.
        _, _, netloc = origin.partition("://")
        if not netloc or netloc != request.headers.get("host", ""):
            raise Problem(
                "cross_site", f"a request from origin {origin[:100]!r} may not change the cluster"
            )


def check_token(request: Request, token: str | None) -> None:
    """With a token configured, every API request must carry it (header, or query for SSE)."""
    if token is None:
        return
    given = ""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    elif request.url.path == "/v1/events":
        # EventSource cannot send headers.
        given = request.query_params.get("access_token", "")
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise Problem("unauthorized", "this gateway needs its token: Authorization: Bearer …")
