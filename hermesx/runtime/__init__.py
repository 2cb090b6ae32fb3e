"""The atom runtime: the wasmtime engine, atoms, their scheduling and syscalls, snapshots,
module rewriting, the C toolchain.

Where things live: ``engine`` (Runtime), ``modules`` (loading and instantiating
modules), ``atom`` (Atom; its roles are listed in ``base``), ``abi`` (the ABI v1
tables), ``instance`` (calls into an instance), ``imports`` (the host functions),
``host`` (what the runtime needs from its node), ``run`` (``hermesx run``).
"""
