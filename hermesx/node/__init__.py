"""The node: its gRPC server, the catalog of active atoms, routing, migration, checkpoint and
passivation policies, fencing.
"""
