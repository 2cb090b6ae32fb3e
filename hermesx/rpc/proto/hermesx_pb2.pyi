from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TAD(_message.Message):
    __slots__ = ("node", "age")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    node: str
    age: int
    def __init__(self, node: _Optional[str] = ..., age: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("node", "tad", "event", "detail")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    node: str
    tad: TAD
    event: str
    detail: str
    def __init__(self, node: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., event: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CheckpointPolicy(_message.Message):
    __slots__ = ("mode", "every_calls", "every_seconds")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ON_REQUEST: _ClassVar[CheckpointPolicy.Mode]
        EVERY_CALL: _ClassVar[CheckpointPolicy.Mode]
        PERIODIC: _ClassVar[CheckpointPolicy.Mode]
    ON_REQUEST: CheckpointPolicy.Mode
    EVERY_CALL: CheckpointPolicy.Mode
    PERIODIC: CheckpointPolicy.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    EVERY_CALLS_FIELD_NUMBER: _ClassVar[int]
    EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    mode: CheckpointPolicy.Mode
    every_calls: int
    every_seconds: float
    def __init__(self, mode: _Optional[_Union[CheckpointPolicy.Mode, str]] = ..., every_calls: _Optional[int] = ..., every_seconds: _Optional[float] = ...) -> None: ...

class AtomMeta(_message.Message):
    __slots__ = ("name", "module_hash", "checkpoint", "reentrant", "tags", "idle_passivate_seconds", "placement", "reply_window_entries", "reply_window_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_HASH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REENTRANT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    IDLE_PASSIVATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    REPLY_WINDOW_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REPLY_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    module_hash: str
    checkpoint: CheckpointPolicy
    reentrant: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    idle_passivate_seconds: float
    placement: str
    reply_window_entries: int
    reply_window_seconds: float
    def __init__(self, name: _Optional[str] = ..., module_hash: _Optional[str] = ..., checkpoint: _Optional[_Union[CheckpointPolicy, _Mapping]] = ..., reentrant: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., idle_passivate_seconds: _Optional[float] = ..., placement: _Optional[str] = ..., reply_window_entries: _Optional[int] = ..., reply_window_seconds: _Optional[float] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("guid", "method", "args", "request_id", "hops", "hop_limit", "chain", "timeout", "trace", "caller_node", "chain_open", "tad")
    GUID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    HOP_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    CALLER_NODE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_OPEN_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    guid: str
    method: str
    args: bytes
    request_id: str
    hops: int
    hop_limit: int
    chain: _containers.RepeatedScalarFieldContainer[str]
    timeout: float
    trace: bool
    caller_node: str
    chain_open: _containers.RepeatedScalarFieldContainer[str]
    tad: TAD
    def __init__(self, guid: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[bytes] = ..., request_id: _Optional[str] = ..., hops: _Optional[int] = ..., hop_limit: _Optional[int] = ..., chain: _Optional[_Iterable[str]] = ..., timeout: _Optional[float] = ..., trace: _Optional[bool] = ..., caller_node: _Optional[str] = ..., chain_open: _Optional[_Iterable[str]] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class InvokeReply(_message.Message):
    __slots__ = ("result", "error", "moved", "tad", "trace")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    error: Error
    moved: TAD
    tad: TAD
    trace: _containers.RepeatedCompositeFieldContainer[Hop]
    def __init__(self, result: _Optional[bytes] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., moved: _Optional[_Union[TAD, _Mapping]] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., trace: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("guid", "code", "payload", "sender", "seq", "hops", "hop_limit", "request_id", "chain", "tad")
    GUID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    HOP_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    guid: str
    code: int
    payload: bytes
    sender: str
    seq: int
    hops: int
    hop_limit: int
    request_id: str
    chain: _containers.RepeatedScalarFieldContainer[str]
    tad: TAD
    def __init__(self, guid: _Optional[str] = ..., code: _Optional[int] = ..., payload: _Optional[bytes] = ..., sender: _Optional[str] = ..., seq: _Optional[int] = ..., hops: _Optional[int] = ..., hop_limit: _Optional[int] = ..., request_id: _Optional[str] = ..., chain: _Optional[_Iterable[str]] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class SendReply(_message.Message):
    __slots__ = ("error", "moved", "tad")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    error: Error
    moved: TAD
    tad: TAD
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., moved: _Optional[_Union[TAD, _Mapping]] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("module", "meta", "init_args", "aliases")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    INIT_ARGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    module: bytes
    meta: AtomMeta
    init_args: bytes
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, module: _Optional[bytes] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., init_args: _Optional[bytes] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateReply(_message.Message):
    __slots__ = ("guid", "tad")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("guid",)
    GUID_FIELD_NUMBER: _ClassVar[int]
    guid: str
    def __init__(self, guid: _Optional[str] = ...) -> None: ...

class LocateReply(_message.Message):
    __slots__ = ("tad", "active_here", "incarnation")
    TAD_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_HERE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    tad: TAD
    active_here: bool
    incarnation: str
    def __init__(self, tad: _Optional[_Union[TAD, _Mapping]] = ..., active_here: _Optional[bool] = ..., incarnation: _Optional[str] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("guid", "destination")
    GUID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    destination: str
    def __init__(self, guid: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class MigrateReply(_message.Message):
    __slots__ = ("tad", "state_bytes", "held_ms", "total_ms")
    TAD_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HELD_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    tad: TAD
    state_bytes: int
    held_ms: float
    total_ms: float
    def __init__(self, tad: _Optional[_Union[TAD, _Mapping]] = ..., state_bytes: _Optional[int] = ..., held_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("timeout_s",)
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    timeout_s: float
    def __init__(self, timeout_s: _Optional[float] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("moved", "remaining", "failures")
    MOVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    moved: int
    remaining: int
    failures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, moved: _Optional[int] = ..., remaining: _Optional[int] = ..., failures: _Optional[_Iterable[str]] = ...) -> None: ...

class CopyRequest(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "meta", "source", "checksum", "incarnation", "logs")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    meta: AtomMeta
    source: str
    checksum: int
    incarnation: str
    logs: bytes
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., source: _Optional[str] = ..., checksum: _Optional[int] = ..., incarnation: _Optional[str] = ..., logs: _Optional[bytes] = ...) -> None: ...

class CopyReply(_message.Message):
    __slots__ = ("incarnation",)
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    def __init__(self, incarnation: _Optional[str] = ...) -> None: ...

class DiscardCopyRequest(_message.Message):
    __slots__ = ("guid", "tad")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "meta", "checksum", "incarnation", "stage", "confirm", "recovery")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    meta: AtomMeta
    checksum: int
    incarnation: str
    stage: bool
    confirm: bool
    recovery: bool
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., checksum: _Optional[int] = ..., incarnation: _Optional[str] = ..., stage: _Optional[bool] = ..., confirm: _Optional[bool] = ..., recovery: _Optional[bool] = ...) -> None: ...

class ActivateReply(_message.Message):
    __slots__ = ("tad", "incarnation")
    TAD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    tad: TAD
    incarnation: str
    def __init__(self, tad: _Optional[_Union[TAD, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class GuidRequest(_message.Message):
    __slots__ = ("guid",)
    GUID_FIELD_NUMBER: _ClassVar[int]
    guid: str
    def __init__(self, guid: _Optional[str] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("name", "active_atoms", "stash_entries", "pid", "rss_bytes", "tags", "atom_calls", "invocations", "fenced", "max_atoms", "atom_room", "draining")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ATOMS_FIELD_NUMBER: _ClassVar[int]
    STASH_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ATOM_CALLS_FIELD_NUMBER: _ClassVar[int]
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    MAX_ATOMS_FIELD_NUMBER: _ClassVar[int]
    ATOM_ROOM_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    name: str
    active_atoms: int
    stash_entries: int
    pid: int
    rss_bytes: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    atom_calls: int
    invocations: int
    fenced: bool
    max_atoms: int
    atom_room: int
    draining: bool
    def __init__(self, name: _Optional[str] = ..., active_atoms: _Optional[int] = ..., stash_entries: _Optional[int] = ..., pid: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., atom_calls: _Optional[int] = ..., invocations: _Optional[int] = ..., fenced: _Optional[bool] = ..., max_atoms: _Optional[int] = ..., atom_room: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class AtomLogLines(_message.Message):
    __slots__ = ("guid", "lines")
    GUID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    guid: str
    lines: bytes
    def __init__(self, guid: _Optional[str] = ..., lines: _Optional[bytes] = ...) -> None: ...

class StoredAtomLogs(_message.Message):
    __slots__ = ("lines", "tad", "dormant")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    DORMANT_FIELD_NUMBER: _ClassVar[int]
    lines: bytes
    tad: TAD
    dormant: bool
    def __init__(self, lines: _Optional[bytes] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., dormant: _Optional[bool] = ...) -> None: ...

class StashPutRequest(_message.Message):
    __slots__ = ("guid", "tad")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ...) -> None: ...

class TestHookRequest(_message.Message):
    __slots__ = ("pause_at", "seconds")
    PAUSE_AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    pause_at: str
    seconds: float
    def __init__(self, pause_at: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class ModuleBytes(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: bytes
    def __init__(self, module: _Optional[bytes] = ...) -> None: ...

class ModuleHash(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: str
    def __init__(self, hash: _Optional[str] = ...) -> None: ...

class RegisterAtomRequest(_message.Message):
    __slots__ = ("guid", "meta", "tad", "snapshot", "checksum", "generation", "incarnation")
    GUID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    meta: AtomMeta
    tad: TAD
    snapshot: bytes
    checksum: int
    generation: int
    incarnation: str
    def __init__(self, guid: _Optional[str] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., checksum: _Optional[int] = ..., generation: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "seq", "checksum", "generation", "periodic")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PERIODIC_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    seq: int
    checksum: int
    generation: int
    periodic: bool
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., seq: _Optional[int] = ..., checksum: _Optional[int] = ..., generation: _Optional[int] = ..., periodic: _Optional[bool] = ...) -> None: ...

class CheckpointPiece(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: CheckpointRequest
    data: bytes
    def __init__(self, head: _Optional[_Union[CheckpointRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CheckpointDelta(_message.Message):
    __slots__ = ("head", "base_seq", "base_checksum")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    BASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    BASE_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    head: CheckpointRequest
    base_seq: int
    base_checksum: int
    def __init__(self, head: _Optional[_Union[CheckpointRequest, _Mapping]] = ..., base_seq: _Optional[int] = ..., base_checksum: _Optional[int] = ...) -> None: ...

class CheckpointAck(_message.Message):
    __slots__ = ("stored", "checksum", "refused")
    STORED_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    checksum: int
    refused: str
    def __init__(self, stored: _Optional[bool] = ..., checksum: _Optional[int] = ..., refused: _Optional[str] = ...) -> None: ...

class CheckpointData(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "meta", "seq", "checksum", "generation", "incarnation")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    meta: AtomMeta
    seq: int
    checksum: int
    generation: int
    incarnation: str
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., seq: _Optional[int] = ..., checksum: _Optional[int] = ..., generation: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class LocationReply(_message.Message):
    __slots__ = ("tad", "dormant", "forwarded_to", "incarnation")
    TAD_FIELD_NUMBER: _ClassVar[int]
    DORMANT_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_TO_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    tad: TAD
    dormant: bool
    forwarded_to: str
    incarnation: str
    def __init__(self, tad: _Optional[_Union[TAD, _Mapping]] = ..., dormant: _Optional[bool] = ..., forwarded_to: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("guid", "source", "destination")
    GUID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    source: TAD
    destination: str
    def __init__(self, guid: _Optional[str] = ..., source: _Optional[_Union[TAD, _Mapping]] = ..., destination: _Optional[str] = ...) -> None: ...

class PrepareReply(_message.Message):
    __slots__ = ("age",)
    AGE_FIELD_NUMBER: _ClassVar[int]
    age: int
    def __init__(self, age: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "checksum", "generation", "incarnation")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    checksum: int
    generation: int
    incarnation: str
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., checksum: _Optional[int] = ..., generation: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("guid", "age")
    GUID_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    guid: str
    age: int
    def __init__(self, guid: _Optional[str] = ..., age: _Optional[int] = ...) -> None: ...

class PassivatedRequest(_message.Message):
    __slots__ = ("guid", "tad", "snapshot", "checksum", "generation")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    snapshot: bytes
    checksum: int
    generation: int
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., snapshot: _Optional[bytes] = ..., checksum: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class PassivatedPiece(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: PassivatedRequest
    data: bytes
    def __init__(self, head: _Optional[_Union[PassivatedRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StoreMoveRequest(_message.Message):
    __slots__ = ("guid", "destination")
    GUID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    guid: str
    destination: str
    def __init__(self, guid: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class AtomRecord(_message.Message):
    __slots__ = ("guid", "tad", "dormant", "meta", "checkpoints")
    GUID_FIELD_NUMBER: _ClassVar[int]
    TAD_FIELD_NUMBER: _ClassVar[int]
    DORMANT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    guid: str
    tad: TAD
    dormant: bool
    meta: AtomMeta
    checkpoints: int
    def __init__(self, guid: _Optional[str] = ..., tad: _Optional[_Union[TAD, _Mapping]] = ..., dormant: _Optional[bool] = ..., meta: _Optional[_Union[AtomMeta, _Mapping]] = ..., checkpoints: _Optional[int] = ...) -> None: ...

class AtomList(_message.Message):
    __slots__ = ("atoms",)
    ATOMS_FIELD_NUMBER: _ClassVar[int]
    atoms: _containers.RepeatedCompositeFieldContainer[AtomRecord]
    def __init__(self, atoms: _Optional[_Iterable[_Union[AtomRecord, _Mapping]]] = ...) -> None: ...

class StoresiteStatus(_message.Message):
    __slots__ = ("id", "atoms", "modules", "checkpoints", "checkpoints_written", "deltas_written", "group_commits")
    ID_FIELD_NUMBER: _ClassVar[int]
    ATOMS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    DELTAS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    GROUP_COMMITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    atoms: int
    modules: int
    checkpoints: int
    checkpoints_written: int
    deltas_written: int
    group_commits: int
    def __init__(self, id: _Optional[str] = ..., atoms: _Optional[int] = ..., modules: _Optional[int] = ..., checkpoints: _Optional[int] = ..., checkpoints_written: _Optional[int] = ..., deltas_written: _Optional[int] = ..., group_commits: _Optional[int] = ...) -> None: ...
