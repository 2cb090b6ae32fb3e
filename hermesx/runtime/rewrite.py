"""Rewrite an atom's module so that every mutable global is exported (docs/DESIGN.md §3).

Snapshots must capture every mutable global (the C stack pointer among them),
and the wasmtime Python API can only read exported globals. This module makes
one small pass over the binary: it reads the import, global and export
sections, and appends an export ``__hx_global_<index>`` for every mutable
global defined in the module that is not exported yet. Everything else is
copied byte for byte.

The result also says, for every mutable global in index order, the export name
under which the runtime reads and writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermesx.core.errors import BadModuleError

__all__ = [
    "GLOBAL_EXPORT_PREFIX",
    "MODULE_LIMITS",
    "RewrittenModule",
    "check_module_limits",
    "export_mutable_globals",
]

GLOBAL_EXPORT_PREFIX = "__hx_global_"

_MAGIC = b"\x00asm"
_VERSION = b"\x01\x00\x00\x00"

_SEC_IMPORT = 2
_SEC_GLOBAL = 6
_SEC_EXPORT = 7
# Sections that must come after the export section, in the binary's order.
_AFTER_EXPORT = frozenset({8, 9, 10, 11, 12})

_EXTERN_FUNC = 0x00
_EXTERN_TABLE = 0x01
_EXTERN_MEMORY = 0x02
_EXTERN_GLOBAL = 0x03
_EXTERN_TAG = 0x04

# Value types with a one-byte encoding (numbers, vectors, abbreviated references).
_SIMPLE_VALTYPES = frozenset(
    {
        0x7F,
        0x7E,
        0x7D,
        0x7C,
        0x7B,
        0x70,
        0x6F,
        0x6E,
        0x6D,
        0x6C,
        0x6B,
        0x6A,
        0x69,
        0x71,
        0x72,
        0x73,
        0x74,
    }
)


# What one module may hold. Loading cost grows with these counts (wasmtime
# enumerates exports in quadratic time: 10,000 globals cost 2 s per instance),
# so they are checked on the raw bytes before anything is compiled. Atoms built
# with the SDK use a few of each; the bounds leave room for larger toolchains.
MAX_MODULE_BYTES = 16 * 2**20
MODULE_LIMITS: dict[int, tuple[str, int]] = {
    1: ("types", 10_000),
    2: ("imports", 1_000),
    3: ("functions", 50_000),
    4: ("tables", 16),
    5: ("memories", 1),
    6: ("globals", 1_000),
    7: ("exports", 1_000),
    9: ("element segments", 10_000),
    11: ("data segments", 10_000),
}


@dataclass(frozen=True, slots=True)
class RewrittenModule:
    """The rewritten binary and the export name of each mutable global."""

    wasm: bytes
    # Export names of the module's mutable globals, in global index order.
    mutable_globals: tuple[str, ...]


class _Reader:
    """Cursor over the module bytes; every read is bounds checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise BadModuleError("module is truncated (unexpected end of bytes)")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BadModuleError("module is truncated (a section runs past the end)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uleb(self) -> int:
        result = 0
        shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise BadModuleError("module has a malformed LEB128 integer")

    def sleb(self) -> None:
        # Only skipped: we never need the value of a constant.
        while self.byte() & 0x80:
            pass

    def name(self) -> str:
        raw = self.take(self.uleb())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadModuleError("module has a name that is not UTF-8") from exc


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _skip_valtype(r: _Reader) -> None:
    code = r.byte()
    if code in (0x63, 0x64):  # (ref null? heaptype): heap type is a signed LEB
        r.sleb()
    elif code not in _SIMPLE_VALTYPES:
        raise BadModuleError(f"module uses an unknown value type 0x{code:02x} in a global")


def _skip_const_expr(r: _Reader) -> None:
    """Skip a constant expression up to and including its ``end``."""
    while True:
        op = r.byte()
        if op == 0x0B:
            return
        if op in (0x41, 0x42):  # i32.const, i64.const
            r.sleb()
        elif op in (0x23, 0xD2):  # global.get, ref.func
            r.uleb()
        elif op == 0x43:
            r.take(4)
        elif op == 0x44:
            r.take(8)
        elif op == 0xD0:  # ref.null heaptype
            r.sleb()
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
            pass
        elif op == 0xFD:  # v128.const
            r.uleb()
            r.take(16)
        elif op == 0xFB:  # GC constant instructions with type immediates
            sub = r.uleb()
            if sub in (0, 1, 6, 7, 8):  # struct.new(_default), array.new(_default/_fixed)
                r.uleb()
                if sub == 8:
                    r.uleb()
            elif sub not in (0x1A, 0x1B, 0x1C):  # any.convert, extern.convert, ref.i31
                raise BadModuleError(f"module has an unsupported constant instruction 0xfb {sub}")
        else:
            raise BadModuleError(f"module has an unsupported constant instruction 0x{op:02x}")


def _count_imported_globals(body: bytes) -> int:
    return _count_imported(body, _EXTERN_GLOBAL)


def _count_imported(body: bytes, counted: int) -> int:
    r = _Reader(body)
    count = 0
    for _ in range(r.uleb()):
        r.name()
        r.name()
        kind = r.byte()
        if kind == _EXTERN_FUNC:
            r.uleb()
        elif kind == _EXTERN_TABLE:
            _skip_valtype(r)
            _skip_limits(r)
        elif kind == _EXTERN_MEMORY:
            _skip_limits(r)
        elif kind == _EXTERN_GLOBAL:
            _skip_valtype(r)
            r.byte()
        elif kind == _EXTERN_TAG:
            r.byte()
            r.uleb()
        else:
            raise BadModuleError(f"module has an import of unknown kind 0x{kind:02x}")
        if kind == counted:
            count += 1
    return count


def _skip_limits(r: _Reader) -> None:
    flags = r.byte()
    r.uleb()
    if flags & 0x01:
        r.uleb()
    if flags & 0x08:  # custom page size proposal
        r.uleb()


def _mutable_defined_globals(body: bytes, first_index: int) -> list[int]:
    r = _Reader(body)
    found: list[int] = []
    for i in range(r.uleb()):
        _skip_valtype(r)
        mutable = r.byte()
        if mutable not in (0, 1):
            raise BadModuleError(f"module has a global with a bad mutability flag {mutable}")
        _skip_const_expr(r)
        if mutable:
            found.append(first_index + i)
    return found


def _global_exports(body: bytes) -> tuple[list[bytes], dict[int, str], set[str]]:
    """Raw export entries, global index -> export name, and all export names."""
    r = _Reader(body)
    entries: list[bytes] = []
    by_global: dict[int, str] = {}
    names: set[str] = set()
    for _ in range(r.uleb()):
        start = r.pos
        name = r.name()
        kind = r.byte()
        index = r.uleb()
        entries.append(body[start : r.pos])
        names.add(name)
        if kind == _EXTERN_GLOBAL and index not in by_global:
            by_global[index] = name
    return entries, by_global, names


def _check_header(wasm: bytes) -> None:
    if len(wasm) < 8 or wasm[:4] != _MAGIC:
        raise BadModuleError("not a WebAssembly module (bad magic bytes; expected \\0asm)")
    if wasm[4:8] != _VERSION:
        raise BadModuleError(
            f"unsupported WebAssembly binary version {wasm[4:8].hex()} "
            "(components are not atoms; expected a core module, version 1)"
        )


def check_module_limits(wasm: bytes) -> None:
    """Refuse a module over :data:`MODULE_LIMITS` or :data:`MAX_MODULE_BYTES`.

    Reads only section headers and item counts: time linear in the number of
    sections, whatever the module holds.
    """
    if len(wasm) > MAX_MODULE_BYTES:
        raise BadModuleError(
            f"module is {len(wasm)} bytes, over the limit of {MAX_MODULE_BYTES} bytes per module"
        )
    _check_header(wasm)
    r = _Reader(wasm, 8)
    counts = dict.fromkeys(MODULE_LIMITS, 0)
    while r.pos < len(wasm):
        sec_id = r.byte()
        size = r.uleb()
        end = r.pos + size
        if end > len(wasm):
            raise BadModuleError("module is truncated (a section runs past the end)")
        if sec_id in counts and size:
            counts[sec_id] += _Reader(wasm[r.pos : min(end, r.pos + 10)]).uleb()
        if sec_id == _SEC_IMPORT and size:
            # Imported memories and globals count toward the module's memories and globals.
            memories, globals_ = _count_imports(wasm[r.pos : end])
            counts[5] += memories
            counts[6] += globals_
        r.pos = end
    for sec_id, (what, limit) in MODULE_LIMITS.items():
        if counts[sec_id] > limit:
            raise BadModuleError(
                f"module has {counts[sec_id]} {what}, over the limit of {limit} {what} per module"
            )


def _count_imports(body: bytes) -> tuple[int, int]:
    """(memories, globals) among the imports; only read when the import count is in bounds."""
    r = _Reader(body)
    if r.uleb() > MODULE_LIMITS[_SEC_IMPORT][1]:
        return 0, 0
    return _count_imported(body, _EXTERN_MEMORY), _count_imported_globals(body)


def export_mutable_globals(wasm: bytes) -> RewrittenModule:
    """Return ``wasm`` with every mutable global exported (see module docstring).

    Raises BadModuleError when the bytes are not a WebAssembly binary module.
    """
    _check_header(wasm)
    r = _Reader(wasm, 8)
    sections: list[tuple[int, int, int]] = []  # (id, start of header, end of body)
    bodies: dict[int, bytes] = {}
    while r.pos < len(wasm):
        start = r.pos
        sec_id = r.byte()
        size = r.uleb()
        body = r.take(size)
        sections.append((sec_id, start, r.pos))
        if sec_id in (_SEC_IMPORT, _SEC_GLOBAL, _SEC_EXPORT):
            bodies[sec_id] = body

    imported = _count_imported_globals(bodies[_SEC_IMPORT]) if _SEC_IMPORT in bodies else 0
    mutable = (
        _mutable_defined_globals(bodies[_SEC_GLOBAL], imported) if _SEC_GLOBAL in bodies else []
    )
    entries, by_global, names = (
        _global_exports(bodies[_SEC_EXPORT]) if _SEC_EXPORT in bodies else ([], {}, set())
    )

    export_names: list[str] = []
    new_entries: list[bytes] = []
    for index in mutable:
        if index in by_global:
            export_names.append(by_global[index])
            continue
        name = f"{GLOBAL_EXPORT_PREFIX}{index}"
        if name in names:
            raise BadModuleError(f"module already exports {name!r}, a name the runtime reserves")
        encoded = name.encode("utf-8")
        new_entries.append(_uleb(len(encoded)) + encoded + bytes([_EXTERN_GLOBAL]) + _uleb(index))
        export_names.append(name)

    if not new_entries:
        return RewrittenModule(wasm, tuple(export_names))

    all_entries = entries + new_entries
    body = _uleb(len(all_entries)) + b"".join(all_entries)
    export_section = bytes([_SEC_EXPORT]) + _uleb(len(body)) + body

    out = bytearray(wasm[:8])
    inserted = False
    for sec_id, start, end in sections:
        if sec_id == _SEC_EXPORT:
            out += export_section
            inserted = True
            continue
        if not inserted and sec_id in _AFTER_EXPORT:
            out += export_section
            inserted = True
        out += wasm[start:end]
    if not inserted:
        out += export_section
    return RewrittenModule(bytes(out), tuple(export_names))
