"""``hermesx deploy``: a cluster described in one file, brought up over SSH (docs/DESIGN.md §8).

:mod:`~hermesx.deploy.clusterfile` reads and checks ``cluster.toml``;
:mod:`~hermesx.deploy.bundle` packs the project, its runtime dependencies and
the example atoms once; :mod:`~hermesx.deploy.remote` runs commands and
copies files over the system's ``ssh`` and ``scp``;
:mod:`~hermesx.deploy.deployer` installs, starts, checks, upgrades and stops
the cluster's parts host by host.
"""
