"""Creating an atom on this node (docs/DESIGN.md §3, §4).

The node checks that it has room for one more atom (its budget,
:mod:`hermesx.node.budget`), the new atom's metadata, compiles its module, picks the
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
from hermesx.node.builder import AtomBuilder
from hermesx.node.context import NodeContext
from hermesx.node.placement import check_placement
from hermesx.rpc.atom_meta import check_atom_meta, tags_refusal
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = ["Creation"]

log = logging.getLogger(__name__)


class Creation:
    """Creates atoms on this node."""

    def __init__(self, ctx: NodeContext, builder: AtomBuilder) -> None:
        self._ctx = ctx
        self._builder = builder

    def create(self, request: pb.CreateRequest) -> tuple[str, TAD]:
        incarnation = self._ctx.fencing.taking_incarnation("cannot create atoms")
        if self._ctx.fencing.draining:
            raise UnreachableError(
                f"node {self._ctx.name} is draining (out of service): create the atom on "
                "another node"
            )
        # Before anything is compiled, bound or recorded: a full node leaves nothing behind.
        with self._ctx.budget.taking("the atom was not created; create it on another node"):
            return self._create(request, incarnation)

    def _create(self, request: pb.CreateRequest, incarnation: str) -> tuple[str, TAD]:
        meta = pb.AtomMeta()
        meta.CopyFrom(request.meta)
        aliases = [_parse_alias(a) for a in request.aliases]
        if meta.name:
            validate_name(meta.name, "atom name")
        check_placement(meta)
        check_atom_meta(meta)
        refusal = tags_refusal("", self._ctx.name, meta.tags, self._ctx.config.tags)
        if refusal:
            raise ConfigurationError(f"cannot create the atom here: {refusal}")
        window = ReplyWindow(
            meta.reply_window_entries or DEFAULT_REPLY_ENTRIES, meta.reply_window_seconds
        )
        loaded = self._builder.compile(request.module)
        meta.module_hash = loaded.hash
        storesites = self._ctx.naming.storesites()
        if not storesites:
            raise UnreachableError("no storesite is running in this cluster; cannot create atoms")
        sid = sorted(storesites)[hash(loaded.hash) % len(storesites)]
        guid = str(GUID.new(sid))
        site = self._ctx.storesites.client(sid, storesites[sid].address).with_timeout(10.0)
        # Checked again before the atom serves; here so a node out of its lease
        # records nothing at the storesite.
        self._ctx.fencing.check_lease("cannot create atoms")
        if meta.name:
            self._ctx.naming.bind(meta.name, guid)
        try:
            atom = self._builder.create(loaded, guid, request.init_args, meta)
            # From here on the window travels in the atom's snapshots.
            atom.replies.window = window
            tad = TAD(self._ctx.name, 1)
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
            self._builder.keep(loaded)
            try:
                self._ctx.fencing.check_lease(f"atom {guid} was not created")
            except HermesError:
                atom.close()
                raise
            active = self._ctx.catalog.install(guid, atom, meta, tad)
            active.checkpoint_seq = 1
            for scope, alias in aliases:
                self._ctx.naming.alias_add(scope, alias, guid)
        except BaseException:
            if meta.name:
                with contextlib.suppress(HermesError):
                    self._ctx.naming.unbind(meta.name)
            raise
        log.info("created atom %s (%s) at %s", meta.name or "-", guid, tad)
        return guid, tad


def _parse_alias(text: str) -> tuple[str, str]:
    scope, sep, alias = text.partition("=")
    if not sep:
        raise ConfigurationError(f"alias {text!r} must be SCOPE=ALIAS")
    return validate_name(scope, "alias scope"), validate_name(alias, "alias")
