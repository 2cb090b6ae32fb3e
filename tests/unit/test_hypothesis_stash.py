"""The stash against a model: random updates, forced entries and restarts (docs/DESIGN.md §1, §4).

A node's stash must hold, for every GUID, the newest TAD it was told about
(or the last one a test hook forced), and exactly that again after the node
restarts. Keys LMDB cannot store are refused with a StorageError and leave
no trace, in memory or on disk.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hermesx.core.errors import StorageError
from hermesx.core.identity import TAD
from hermesx.routing.stash import Stash

guids = st.sampled_from(["s1:" + "a" * 32, "s1:" + "b" * 32, "s2:" + "c" * 32]) | st.text(
    min_size=1, max_size=8, alphabet=st.characters(blacklist_categories=("Cs",))
)
# Keys LMDB refuses: empty, or longer than its 511-byte key limit.
bad_guids = st.sampled_from(["", "g" * 512, "é" * 300])
nodes = st.sampled_from(["n1", "n2", "n3", "node-with-a-longer-name"])
ages = st.integers(0, 2**64 - 1)


class StashModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="hx-stash-"))
        self.stash: Stash | None = Stash(self.dir / "stash")
        self.model: dict[str, TAD] = {}

    @property
    def live(self) -> Stash:
        assert self.stash is not None
        return self.stash

    @rule(guid=guids, node=nodes, age=ages)
    def update(self, guid: str, node: str, age: int) -> None:
        tad = TAD(node, age)
        current = self.model.get(guid)
        expected = current is None or age > current.age
        assert self.live.update(guid, tad) == expected
        if expected:
            self.model[guid] = tad

    @rule(guid=guids, node=nodes, age=ages)
    def force(self, guid: str, node: str, age: int) -> None:
        self.live.force(guid, TAD(node, age))
        self.model[guid] = TAD(node, age)

    @rule(guid=bad_guids, node=nodes, age=ages, forced=st.booleans())
    def refused_key(self, guid: str, node: str, age: int, forced: bool) -> None:
        try:
            if forced:
                self.live.force(guid, TAD(node, age))
            else:
                self.live.update(guid, TAD(node, age))
        except StorageError as exc:
            assert "stash" in str(exc)
        else:
            self.model[guid] = TAD(node, age)

    @rule()
    def restart(self) -> None:
        self.live.close()
        self.stash = Stash(self.dir / "stash")

    @precondition(lambda self: self.stash is not None)
    @invariant()
    def holds_the_model(self) -> None:
        for guid, tad in self.model.items():
            assert self.live.get(guid) == tad
        assert len(self.live) == len(self.model)

    def teardown(self) -> None:
        if self.stash is not None:
            self.stash.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StashModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_stash_matches_its_model_across_restarts = StashModel.TestCase
