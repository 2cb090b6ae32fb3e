"""Roles of the cluster's certificates and who may call which RPC (docs/DESIGN.md §10).

Every certificate a secure cluster issues names one role:

* ``node`` — a supervisor process (``hermesx node serve``);
* ``storesite`` — a storesite process;
* ``client`` — programs outside the cluster: the CLI, the Python client;
* ``gateway`` — an HTTP gateway in front of the cluster;
* ``test`` — the test harness of a local cluster started with test hooks
  (only such a cluster issues it): the public RPCs plus the test hooks.

A *public* RPC (invoke, send, create, locate, migrate, checkpoint,
passivate, status; at the storesite locate, move home, list, status) is open
to every role. An *internal* RPC is open only to the roles whose processes
call it in the protocols of docs/DESIGN.md §4 to §6 (who calls it is written next to
each entry). A refused call ends with ``not_authorized`` naming the RPC and the
caller's role. Insecure clusters (``--insecure``) have no certificates and so
no roles: every caller may call everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from hermesx.core.errors import ConfigurationError

__all__ = [
    "CLIENT",
    "CLIENT_CERT_NAME",
    "GATEWAY",
    "MEMBER_ROLES",
    "NODE",
    "ROLES",
    "RPC_ROLES",
    "STORESITE",
    "TEST",
    "TEST_CERT_NAME",
    "allowed_roles",
    "validate_role",
]

NODE: Final = "node"
STORESITE: Final = "storesite"
CLIENT: Final = "client"
GATEWAY: Final = "gateway"
TEST: Final = "test"

# Clients of a cluster share one certificate name; a local cluster with test
# hooks also makes one certificate of role test.
CLIENT_CERT_NAME: Final = "client"
TEST_CERT_NAME: Final = "tester"

ROLES: Final = (NODE, STORESITE, CLIENT, GATEWAY, TEST)
MEMBER_ROLES: Final = frozenset({NODE, STORESITE})
_EVERYONE: Final = frozenset(ROLES)

# Keys are "<Service>/<Method>" of protos/hermesx.proto.
RPC_ROLES: Final[Mapping[str, frozenset[str]]] = {
    # ----- Supervisor: public
    "Supervisor/Invoke": _EVERYONE,  # clients, gateways; nodes forwarding and atoms calling
    "Supervisor/Send": _EVERYONE,  # clients; nodes forwarding and atoms sending
    "Supervisor/Create": _EVERYONE,
    "Supervisor/Locate": _EVERYONE,
    "Supervisor/Migrate": _EVERYONE,
    "Supervisor/Checkpoint": _EVERYONE,
    "Supervisor/Passivate": _EVERYONE,
    "Supervisor/Status": _EVERYONE,  # clients; storesites weighing placement
    # ----- Supervisor: internal
    # The source node of a move hands the atom over: stage, activate or discard its copy.
    "Supervisor/StageCopy": frozenset({NODE}),
    "Supervisor/ActivateCopy": frozenset({NODE}),
    "Supervisor/DiscardCopy": frozenset({NODE}),
    "Supervisor/Activate": frozenset({STORESITE}),  # recovery and activation of dormant atoms
    # ----- NodeTestHooks: served only by nodes started with test hooks
    "NodeTestHooks/StashPut": frozenset({TEST}),
    "NodeTestHooks/TestHook": frozenset({TEST}),
    # ----- Storesite: public
    "Storesite/Locate": _EVERYONE,  # clients and nodes when a forwarding chain breaks
    "Storesite/MoveHome": _EVERYONE,
    "Storesite/ListAtoms": _EVERYONE,
    "Storesite/Status": _EVERYONE,
    # ----- Storesite: internal
    "Storesite/PutModule": frozenset({NODE, STORESITE}),  # create; a home move's new storesite
    "Storesite/GetModule": frozenset({NODE}),  # activation on a node lacking the module
    "Storesite/RegisterAtom": frozenset({NODE}),  # create
    "Storesite/PutCheckpoint": frozenset({NODE}),  # checkpoints of active atoms
    "Storesite/PutCheckpointPieces": frozenset({NODE}),  # the same, for a large state
    "Storesite/PutCheckpointDelta": frozenset({NODE}),  # the same, incremental
    "Storesite/GetCheckpoint": frozenset({NODE}),  # activation of a dormant atom
    "Storesite/Prepare": frozenset({NODE}),  # the source node of a move
    "Storesite/Stage": frozenset({NODE}),
    "Storesite/Commit": frozenset({NODE}),
    "Storesite/Abort": frozenset({NODE}),
    "Storesite/Passivated": frozenset({NODE}),  # a node passivating an atom
    "Storesite/PassivatedPieces": frozenset({NODE}),  # the same, for a large state
    "Storesite/Forget": frozenset({NODE}),  # erases an atom's records: members only
    "Storesite/AdoptAtom": frozenset({STORESITE}),  # the old home of a home move
}


def allowed_roles(method: str) -> frozenset[str]:
    """Roles that may call gRPC method ``method`` (``/pkg.Service/Method`` or ``Service/Method``).

    An RPC missing from the table is internal to the cluster's members: a new
    RPC is closed to clients until someone decides it is public.
    """
    service, _, name = method.rpartition("/")
    key = f"{service.rpartition('.')[2].lstrip('/')}/{name}"
    return RPC_ROLES.get(key, MEMBER_ROLES)


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigurationError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role
