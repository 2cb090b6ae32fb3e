"""The atom runtime: the wasmtime engine, atoms, their scheduling and syscalls, snapshots,
module rewriting, the C toolchain.
"""
