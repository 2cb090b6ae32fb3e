"""Creating an atom on this node (DESIGN.md §3, §4).

The node checks the new atom's metadata, compiles its module, picks the
storesite that will be its home (by the module's hash, among the live ones),
binds its name, runs its ``init``, and registers the atom with its first
checkpoint at the storesite — naming this node's incarnation — before it
serves. A failure after binding the name unbinds it.
"""

from __future__ import annotations

import contextlib
import logging

from hermesx.core.errors import ConfigurationError, HermesError, UnreachableError
from hermesx.core.identity import GUID, TAD, validate_name
from hermesx.core.replies import DEFAULT_REPLY_ENTRIES, ReplyWindow
from hermesx.core.snapshot import snapshot_checksum
from hermesx.node.catalog import Catalog
from hermesx.node.fencing import Fencing
from hermesx.node.modules import ModuleCache
from hermesx.node.placement import check_placement
from hermesx.node.storage import AtomStoresites
from hermesx.routing.naming import Naming
from hermesx.rpc.atom_meta import check_atom_meta, tags_refusal
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.atom import Runtime
from hermesx.runtime.host import AtomHost

__all__ = ["Creation"]

log = logging.getLogger(__name__)


class Creation:
    """Creates atoms on node ``node``."""

    def __init__(
        self,
        node: str,
        tags: tuple[str, ...],
        *,
        catalog: Catalog,
        fencing: Fencing,
        modules: ModuleCache,
        storesites: AtomStoresites,
        naming: Naming,
        runtime: Runtime,
        host: AtomHost,
    ) -> None:
        self._node = node
        self._tags = tags
        self._catalog = catalog
        self._fencing = fencing
        self._modules = modules
        self._storesites = storesites
        self._naming = naming
        self._runtime = runtime
        self._host = host

    def create(self, request: pb.CreateRequest) -> tuple[str, TAD]:
        incarnation = self._fencing.taking_incarnation("cannot create atoms")
        meta = pb.AtomMeta()
        meta.CopyFrom(request.meta)
        aliases = [_parse_alias(a) for a in request.aliases]
        if meta.name:
            validate_name(meta.name, "atom name")
        check_placement(meta)
        check_atom_meta(meta)
        refusal = tags_refusal("", self._node, meta.tags, self._tags)
        if refusal:
            raise ConfigurationError(f"cannot create the atom here: {refusal}")
        window = ReplyWindow(
            meta.reply_window_entries or DEFAULT_REPLY_ENTRIES, meta.reply_window_seconds
        )
        loaded = self._runtime.load(request.module)
        meta.module_hash = loaded.hash
        storesites = self._naming.storesites()
        if not storesites:
            raise UnreachableError("no storesite is running in this cluster; cannot create atoms")
        sid = sorted(storesites)[hash(loaded.hash) % len(storesites)]
        guid = str(GUID.new(sid))
        site = self._storesites.client(sid, storesites[sid].address).with_timeout(10.0)
        # Checked again before the atom serves; here so a node out of its lease
        # records nothing at the storesite.
        self._fencing.check_lease("cannot create atoms")
        if meta.name:
            self._naming.bind(meta.name, guid)
        try:
            atom = self._runtime.create(
                loaded, guid, self._host, request.init_args, reentrant=meta.reentrant
            )
            # From here on the window travels in the atom's snapshots.
            atom.replies.window = window
            tad = TAD(self._node, 1)
            snapshot, generation = atom.snapshot_with_generation()
            try:
                site.put_module(request.module)
                site.register_atom(
                    guid,
                    meta,
                    tad,
                    snapshot,
                    checksum=snapshot_checksum(snapshot),
                    generation=generation,
                    incarnation=incarnation,
                )
            except HermesError:
                atom.close()
                raise
            self._modules.keep(loaded)
            try:
                self._fencing.check_lease(f"atom {guid} was not created")
            except HermesError:
                atom.close()
                raise
            active = self._catalog.install(guid, atom, meta, tad)
            active.checkpoint_seq = 1
            for scope, alias in aliases:
                self._naming.alias_add(scope, alias, guid)
        except BaseException:
            if meta.name:
                with contextlib.suppress(HermesError):
                    self._naming.unbind(meta.name)
            raise
        log.info("created atom %s (%s) at %s", meta.name or "-", guid, tad)
        return guid, tad


def _parse_alias(text: str) -> tuple[str, str]:
    scope, sep, alias = text.partition("=")
    if not sep:
        raise ConfigurationError(f"alias {text!r} must be SCOPE=ALIAS")
    return validate_name(scope, "alias scope"), validate_name(alias, "alias")
