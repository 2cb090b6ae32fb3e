"""ZooKeeper ACLs: only holders of the cluster's secret read or write the cluster root."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from hermesx.rpc import security
from hermesx.testing.plugin import started_nameservice
from nameservice import InvalidNameError, NameNotFoundError, NameService, NameTakenError
from nameservice.errors import NotAuthorizedError
from nameservice.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.integration

GUID_A = "s1:" + "a" * 32
GUID_B = "s1:" + "b" * 32


@pytest.fixture
def secret(tmp_path: pathlib.Path, cluster_name: str) -> tuple[str, str]:
    return security.zk_auth(security.init_certs(tmp_path / "tls", cluster_name).directory)


@pytest.fixture
def member(
    zk_server: ZooKeeperServer, cluster_name: str, secret: tuple[str, str]
) -> Iterator[NameService]:
    with started_nameservice(zk_server, cluster_name, auth=secret) as service:
        yield service


@pytest.fixture
def raw_zk(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain ZooKeeper client with no credentials: an outsider."""
    client = KazooClient(hosts=zk_server.connect_string, timeout=4.0)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def test_members_with_the_secret_share_the_cluster(
    member: NameService, zk_server: ZooKeeperServer, cluster_name: str, secret: tuple[str, str]
) -> None:
    member.bind("voucher", GUID_A)
    member.register_node("n1", "127.0.0.1:7001", ["eu"])
    member.alias_add("dept", "sales", GUID_A)

    with NameService(zk_server.connect_string, cluster_name, auth=secret) as other:
        assert other.protected
        assert other.resolve("voucher") == GUID_A
        assert other.nodes()["n1"].address == "127.0.0.1:7001"
        assert other.lookup("sal.*", scope="dept") == [GUID_A]
        with pytest.raises(NameTakenError):
            other.bind("voucher", GUID_B)


def test_a_client_without_the_secret_is_refused_at_start(
    member: NameService, zk_server: ZooKeeperServer, cluster_name: str
) -> None:
    member.bind("voucher", GUID_A)
    outsider = NameService(zk_server.connect_string, cluster_name)

    with pytest.raises(NotAuthorizedError, match=f"cluster {cluster_name} is protected"):
        outsider.start()

    outsider.close()
    assert member.resolve("voucher") == GUID_A


def test_a_client_with_another_secret_is_refused(
    member: NameService, zk_server: ZooKeeperServer, cluster_name: str
) -> None:
    outsider = NameService(zk_server.connect_string, cluster_name, auth=("hermesx", "guess"))

    with pytest.raises(NotAuthorizedError, match="another secret"):
        outsider.start()
    outsider.close()


def test_outsiders_cannot_read_create_or_delete_under_the_cluster_root(
    member: NameService, raw_zk: KazooClient, cluster_name: str
) -> None:
    member.bind("voucher", GUID_A)
    root = f"/hermesx/{cluster_name}"

    with pytest.raises(NoAuthError):
        raw_zk.create(f"{root}/names/forged", GUID_B.encode())
    with pytest.raises(NoAuthError):
        raw_zk.delete(f"{root}/names/voucher")
    with pytest.raises(NoAuthError):
        raw_zk.get(f"{root}/names/voucher")
    with pytest.raises(NoAuthError):
        raw_zk.create(f"{root}/nodes/evil", b'{"address": "10.0.0.1:1"}', ephemeral=True)
    with pytest.raises(NoAuthError):
        raw_zk.set(root, b"x")
    with pytest.raises(NoAuthError):
        raw_zk.delete(f"{root}/homes")

    assert member.resolve("voucher") == GUID_A
    assert member.names() == {"voucher": GUID_A}
    assert "evil" not in member.nodes()


def test_other_clusters_can_still_be_made_beside_a_protected_one(
    member: NameService, zk_server: ZooKeeperServer, cluster_name: str
) -> None:
    with NameService(zk_server.connect_string, f"{cluster_name}-open") as open_cluster:
        open_cluster.bind("voucher", GUID_B)
        assert open_cluster.resolve("voucher") == GUID_B
    assert member.names() == {}


def test_a_cluster_first_run_open_is_protected_when_a_member_brings_the_secret(
    zk_server: ZooKeeperServer, cluster_name: str, secret: tuple[str, str], raw_zk: KazooClient
) -> None:
    with NameService(zk_server.connect_string, cluster_name) as before:
        before.bind("voucher", GUID_A)

    with NameService(zk_server.connect_string, cluster_name, auth=secret) as member:
        assert member.resolve("voucher") == GUID_A
        member.bind("party", GUID_B)

        outsider = NameService(zk_server.connect_string, cluster_name)
        with pytest.raises(NotAuthorizedError):
            outsider.start()
        outsider.close()
        with pytest.raises(NoAuthError):
            raw_zk.create(f"/hermesx/{cluster_name}/names/forged", GUID_B.encode())
        with pytest.raises(NoAuthError):
            raw_zk.delete(f"/hermesx/{cluster_name}/names/party")


def test_an_operation_refused_by_the_acl_is_a_clear_error(
    zk_server: ZooKeeperServer, cluster_name: str, secret: tuple[str, str]
) -> None:
    # An open client that started before a member protected the cluster.
    with NameService(zk_server.connect_string, cluster_name) as early:
        with NameService(zk_server.connect_string, cluster_name, auth=secret) as member:
            assert member.protected
        with pytest.raises(NotAuthorizedError, match="refused to bind 'voucher'"):
            early.bind("voucher", GUID_A)


def test_malformed_auth_is_refused_before_connecting(cluster_name: str) -> None:
    for bad in [("", "x"), ("user:x", "y"), ("user",), "user:password"]:
        with pytest.raises(InvalidNameError, match="must be"):
            NameService("127.0.0.1:1", cluster_name, auth=bad)  # type: ignore[arg-type]


# -- /hermesx itself, and read-only clients ------------------------------------------------


@pytest.fixture
def own_zk() -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this test alone: nobody has made /hermesx on it yet."""
    server = ZooKeeperServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_first_member_makes_hermesx_that_outsiders_cannot_create_under(
    own_zk: ZooKeeperServer, cluster_name: str, secret: tuple[str, str]
) -> None:
    with NameService(own_zk.connect_string, cluster_name, auth=secret) as member:
        member.bind("voucher", GUID_A)
        outsider = KazooClient(hosts=own_zk.connect_string, timeout=4.0)
        outsider.start(timeout=10)
        try:
            with pytest.raises(NoAuthError):
                outsider.create("/hermesx/squatted", b"")
            with pytest.raises(NoAuthError):
                outsider.delete(f"/hermesx/{cluster_name}", recursive=True)
            # Cluster names stay visible; their content does not.
            assert outsider.get_children("/hermesx") == [cluster_name]
        finally:
            outsider.stop()
            outsider.close()
        # A cluster without a secret cannot squat a name there either.
        squatter = NameService(own_zk.connect_string, "future")
        with pytest.raises(NotAuthorizedError):
            squatter.start()
        squatter.close()
        assert member.resolve("voucher") == GUID_A


def test_a_second_cluster_is_told_to_use_a_root_of_its_own_and_can(
    own_zk: ZooKeeperServer, cluster_name: str, secret: tuple[str, str], tmp_path: pathlib.Path
) -> None:
    other_secret = security.zk_auth(security.init_certs(tmp_path / "other", "other").directory)
    with NameService(own_zk.connect_string, cluster_name, auth=secret):
        second = NameService(own_zk.connect_string, "other", auth=other_secret)
        with pytest.raises(NotAuthorizedError, match=r"root of its own \(HOST:PORT/ROOT"):
            second.start()
        second.close()

        unmade = NameService(own_zk.connect_string + "/teams/other", "other", auth=other_secret)
        with pytest.raises(NameNotFoundError, match="root /teams/other does not exist"):
            unmade.start()
        unmade.close()

        # The ZooKeeper's operator makes a root for the second cluster.
        operator = KazooClient(hosts=own_zk.connect_string, timeout=4.0)
        operator.start(timeout=10)
        try:
            operator.create("/teams/other", b"", makepath=True)
        finally:
            operator.stop()
            operator.close()
        with NameService(
            own_zk.connect_string + "/teams/other", "other", auth=other_secret
        ) as rooted:
            rooted.bind("voucher", GUID_B)
            assert rooted.resolve("voucher") == GUID_B


def test_a_reader_reads_the_cluster_and_writes_nothing(
    zk_server: ZooKeeperServer, cluster_name: str, tmp_path: pathlib.Path
) -> None:
    tls = security.init_certs(tmp_path / "tls", cluster_name).directory
    reader_auth = security.zk_auth(tls, "client")
    reader = NameService(zk_server.connect_string, cluster_name, auth=reader_auth, read_only=True)
    with pytest.raises(NameNotFoundError, match=f"no cluster {cluster_name}"):
        reader.start()
    reader.close()

    with NameService(
        zk_server.connect_string,
        cluster_name,
        auth=security.zk_auth(tls),
        readers=security.zk_readers(tls),
    ) as member:
        member.bind("voucher", GUID_A)
        member.register_node("n1", "127.0.0.1:7001")
        member.alias_add("dept", "sales", GUID_A)
        with NameService(
            zk_server.connect_string, cluster_name, auth=reader_auth, read_only=True
        ) as client:
            assert client.resolve("voucher") == GUID_A
            assert client.nodes()["n1"].address == "127.0.0.1:7001"
            assert client.lookup("sal.*", scope="dept") == [GUID_A]
            with pytest.raises(NotAuthorizedError):
                client.bind("forged", GUID_B)
            with pytest.raises(NotAuthorizedError):
                client.unbind("voucher")
            with pytest.raises(NotAuthorizedError):
                client.register_node("evil", "10.0.0.1:1")
        assert member.names() == {"voucher": GUID_A}
        assert "evil" not in member.nodes()
    # The members' secret is not derivable from the readers'.
    assert reader_auth[1] != security.zk_auth(tls)[1]
