"""The harness every test uses: real clusters, one way to wait, nothing left running.

:mod:`~hermesx.testing.plugin` is the pytest plugin (tests/conftest.py loads
it): the run's ZooKeeper, the cluster fixtures, the clients, and the logs of a
failed test's processes attached to its report. :mod:`~hermesx.testing.clusters`
starts local clusters for tests, :mod:`~hermesx.testing.wait` holds
``wait_until``, :mod:`~hermesx.testing.reaper` stops a run's processes however
the run ends, and :mod:`~hermesx.testing.processes` finds what a test left behind.
Helpers tests share: :mod:`~hermesx.testing.callers` (a caller in the
background), :mod:`~hermesx.testing.moves` (a move in the background, where
an atom has copies), :mod:`~hermesx.testing.transports` (one request over
either transport), :mod:`~hermesx.testing.tls` (a TLS client driven by hand).
"""
