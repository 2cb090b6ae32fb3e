"""The storesite: checkpoints, location records, modules and recovery (docs/DESIGN.md §6).

Public face: :class:`StoresiteClient` for callers, :func:`serve` for the
process, :class:`AtomStore` and :class:`Storesite` for embedding and tests.
"""

from __future__ import annotations

from hermesx.rpc.storesite_client import (
    AtomInfo,
    CheckpointInfo,
    StoredLocation,
    StoresiteClient,
    StoresiteInfo,
)
from storesite.directory import Directory
from storesite.process import serve
from storesite.records import AtomState, Checkpoint
from storesite.server import StoresiteServer
from storesite.service import Storesite
from storesite.store import AtomStore

__all__ = [
    "AtomInfo",
    "AtomState",
    "AtomStore",
    "Checkpoint",
    "CheckpointInfo",
    "Directory",
    "StoredLocation",
    "Storesite",
    "StoresiteClient",
    "StoresiteInfo",
    "StoresiteServer",
    "serve",
]
