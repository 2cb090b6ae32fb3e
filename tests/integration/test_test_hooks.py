"""The test-only RPCs answer only on nodes started with test hooks (issue 12).

``StashPut`` (rewrite a node's stash, relocating an atom without its
storesite's consent) and ``TestHook`` (pause a node mid-move) live in the
``NodeTestHooks`` service, which a node registers only with ``--test-hooks``.
Any other node answers UNIMPLEMENTED, whatever certificate the caller shows.
"""

from __future__ import annotations

import pathlib

import grpc
import pytest

from hermesx.client import Client
from hermesx.core.errors import CommunicationError
from hermesx.core.identity import TAD
from hermesx.local.cluster import LocalCluster
from hermesx.rpc import roles, security

pytestmark = pytest.mark.integration


def test_a_node_started_without_test_hooks_refuses_stash_put_and_test_hook(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(1, test_hooks=False)  # type: ignore[operator]
    # A test certificate passes the role check: the refusal is the node's own.
    security.issue_cert(cluster.tls_dir, cluster.name, roles.TEST_CERT_NAME, roles.TEST)
    with Client(cluster.zk, cluster.name, cert=roles.TEST_CERT_NAME) as tester:
        guid = tester.create(atoms["counter"], on="n1")
        before = tester.stash_of("n1", guid)
        n1 = tester.node_member("n1")

        with pytest.raises(CommunicationError, match=r"StashPut\(.*node n1 at ") as info:
            tester.node_client.stash_put(n1, guid, TAD("n9", 99))
        cause = info.value.__cause__
        assert isinstance(cause, grpc.Call)
        assert cause.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(CommunicationError, match=r"TestHook\(prepared\)") as info:
            tester.node_client.pause_at(n1, "prepared", 5.0)
        cause = info.value.__cause__
        assert isinstance(cause, grpc.Call)
        assert cause.code() == grpc.StatusCode.UNIMPLEMENTED

        # Nothing moved: the stash holds what it held and the atom serves where it ran.
        assert tester.stash_of("n1", guid) == before
        assert tester.atom(guid).incr(3) == 3
        assert tester.locate(guid).node == "n1"
