"""JSON <-> msgpack for the command line (docs/DESIGN.md §3, §8).

Atoms take and return msgpack; people type JSON. ``hermesx invoke`` and
``hermesx run`` turn the JSON argument into msgpack with
:func:`json_to_msgpack` and print results made JSON-printable by
:func:`msgpack_to_python`: binary values become text when they are UTF-8 and
``{"$base64": "..."}`` otherwise, map keys become strings, and msgpack
extension types become ``{"$ext": code, "$base64": "..."}``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack

from hermesx.core.errors import ConfigurationError

__all__ = ["json_to_msgpack", "msgpack_to_python", "pack", "unpack"]


def pack(obj: object) -> bytes:
    """msgpack bytes of ``obj`` (str as str, bytes as bin)."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") from exc
    return data


def unpack(data: bytes) -> object:
    """The Python value of msgpack ``data`` (bin stays bytes)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ConfigurationError(f"not valid msgpack ({len(data)} bytes): {exc}") from exc


def json_to_msgpack(text: str) -> bytes:
    """msgpack of the JSON value ``text``; an empty string means nil."""
    if not text.strip():
        return pack(None)
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise ConfigurationError(
            f"arguments of {len(text)} characters nest too deeply to be read as JSON"
        ) from exc
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ConfigurationError(
            f"arguments {shown!r} are not valid JSON: {exc.msg} at column {exc.colno}"
        ) from exc
    return pack(value)


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": value.code, "$base64": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, dict):
        return {_key(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    printable = _printable(key)
    return printable if isinstance(printable, str) else json.dumps(printable, sort_keys=True)


def msgpack_to_python(data: bytes) -> object:
    """A JSON-printable Python value of msgpack ``data`` (see module docstring)."""
    value = unpack(data)
    try:
        return _printable(value)
    except RecursionError as exc:
        # msgpack allows deeper nesting than Python's stack does here.
        raise ConfigurationError(
            f"msgpack value of {len(data)} bytes nests too deeply to print as JSON"
        ) from exc
