"""The cluster's tree in ZooKeeper and who may read and write it (docs/DESIGN.md §7).

Everything of a cluster lives under ``/hermesx/<cluster>``, in the areas
``nodes``, ``storesites``, ``names``, ``aliases`` and ``homes``;
:func:`make_tree` makes them when missing. With a secret the cluster's tree
gets an ACL (:func:`cluster_acl`) giving all permissions to the cluster's
identity, read permission to each reader identity and nothing to anyone
else; ``/hermesx`` itself, shared by the clusters of one ZooKeeper, is made
readable by anyone but writable by the first secret alone (see the module
docstring of :mod:`nameservice.client`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.security import ACL, ANYONE_ID_UNSAFE, Permissions, make_digest_acl

from nameservice.errors import InvalidNameError, NameNotFoundError, NotAuthorizedError
from nameservice.session import Session

__all__ = ["AREAS", "ROOT", "cluster_acl", "make_tree", "validate_auth"]

log = logging.getLogger(__name__)

ROOT: Final = "/hermesx"
AREAS: Final = ("nodes", "storesites", "names", "aliases", "homes")


def validate_auth(auth: Any, cluster: str) -> tuple[str, str] | None:
    """``auth`` as a (user, password) pair; InvalidNameError when it is not one."""
    if auth is None:
        return None
    if (
        not isinstance(auth, tuple)
        or len(auth) != 2
        or not all(isinstance(part, str) and part for part in auth)
        or ":" in auth[0]
    ):
        raise InvalidNameError(
            f"auth of cluster {cluster!r} must be (user, password), non-empty, no ':' in user"
        )
    return (auth[0], auth[1])


def cluster_acl(
    auth: tuple[str, str] | None, readers: Sequence[tuple[str, str]], cluster: str
) -> list[ACL] | None:
    """The ACL of every znode a member with secret ``auth`` creates; None without a secret."""
    if auth is None:
        return None
    acl = [make_digest_acl(auth[0], auth[1], all=True)]
    for reader in readers:
        user, password = validate_auth(reader, cluster) or ("", "")
        acl.append(make_digest_acl(user, password, read=True))
    return acl


def make_tree(session: Session, client: KazooClient, root: str, *, read_only: bool) -> None:
    """Make the cluster's root and areas (a reader only checks they exist)."""
    call = session.call
    cluster = session.cluster
    if read_only:
        # A reader makes nothing: the cluster's members made its tree.
        try:
            call(f"list {root}", client.get_children_async, root)
        except NoNodeError:
            raise NameNotFoundError(
                f"no cluster {cluster} at name service {session.hosts} "
                "(none of its nodes or storesites has started yet)"
            ) from None
        return
    if session.acl is not None:
        _make_shared_root(session, client)
        try:
            call(f"create {root}", client.ensure_path_async, root)
        except NotAuthorizedError:
            raise NotAuthorizedError(
                f"name service at {session.hosts} refused to create {root}: {ROOT} "
                "there belongs to another cluster's secret; give this cluster a ZooKeeper "
                "root of its own (HOST:PORT/ROOT, made by the ZooKeeper's operator)"
            ) from None
        _protect(session, client, root)
    for area in AREAS:
        call(f"create {root}/{area}", client.ensure_path_async, f"{root}/{area}")
        if session.acl is not None:
            _protect(session, client, f"{root}/{area}")
    if session.acl is None:
        # A protected cluster lets anyone see that its znodes exist, not
        # read them: fail here, with a clear error, not on first use.
        call(f"list {root}", client.get_children_async, root)


def _make_shared_root(session: Session, client: KazooClient) -> None:
    """Create /hermesx when missing: readable by all, writable by our secret alone."""
    assert session.acl is not None
    found = session.call(f"look for {ROOT}", client.exists_async, ROOT)
    if found is not None:
        return
    acl = [*session.acl, ACL(Permissions.READ, ANYONE_ID_UNSAFE)]
    try:
        session.call(f"create {ROOT}", client.create_async, ROOT, b"", acl=acl)
    except NodeExistsError:
        return  # another member (of this or another cluster) made it first
    log.info("name service: created %s, writable by cluster %s alone", ROOT, session.cluster)


def _protect(session: Session, client: KazooClient, path: str) -> None:
    """Give ``path`` our ACL if it has another one.

    A cluster first run without a secret keeps open znodes; protecting the
    root and its area directories stops outsiders from creating or deleting
    entries in them (ZooKeeper checks those rights on the parent).
    """
    acl = session.acl
    if acl is None:
        return
    acls, _ = session.call(f"read the ACL of {path}", client.get_acls_async, path)
    if list(acls) == acl:
        return
    # Any version: two members protecting at once set the same ACL.
    session.call(f"protect {path}", client.set_acls_async, path, acl)
    log.info("name service: protected %s of cluster %s with its secret", path, session.cluster)
