"""The node (``hermesx node serve``): one module per role, put together by ``supervisor``.

``server`` (the gRPC services), ``dispatch`` (run here or forward),
``admission`` (call limits), ``catalog`` (active and staged atoms), ``builder``
(modules and atoms), ``host`` (atoms' syscalls), ``creation``, ``checkpoints``,
``passivation`` and ``placement`` (policies), ``migration_source``,
``migration_destination`` and ``aborts`` (both roles of a move), ``storage``
(the atoms' storesites), ``fencing``, ``lease`` and ``liveness`` (when the node
may serve), ``testhooks``, ``config`` and ``context``.
"""
