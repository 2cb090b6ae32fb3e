"""The HTTP gateway and web console in front of a cluster (docs/DESIGN.md §13).

``hermesx gateway --listen HOST:PORT`` (and ``hermesx up``) runs it: a
cluster client with a certificate of its own (role ``gateway``) that serves
JSON over HTTP — calls, atoms, nodes, lookups, moves — and the console at
``/``. The modules: :mod:`~hermesx.gateway.app` (the routes),
:mod:`~hermesx.gateway.view` (what the gateway knows of the cluster and the
events it derives), :mod:`~hermesx.gateway.problems` (errors as
``application/problem+json``), :mod:`~hermesx.gateway.idempotency`
(``Idempotency-Key``), :mod:`~hermesx.gateway.guards` (bodies, CSRF, the
bearer token), :mod:`~hermesx.gateway.protocol` (a deadline on request
heads), :mod:`~hermesx.gateway.openapi` and :mod:`~hermesx.gateway.server`
(the process).
"""
