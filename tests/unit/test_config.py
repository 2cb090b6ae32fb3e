"""Where the cluster is: flags, environment, local cluster state; typos are refused."""

from __future__ import annotations

import json
import pathlib

import pytest

from hermesx.core.config import check_environment, resolve_cluster
from hermesx.core.errors import ConfigurationError


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERMESX_ZK", "127.0.0.1:1")
    monkeypatch.setenv("HERMESX_CLUSTER", "envc")
    assert resolve_cluster("127.0.0.1:2", "flagc").zk == "127.0.0.1:2"
    assert resolve_cluster(None, None).cluster == "envc"


def test_local_cluster_state_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("HERMESX_ZK", raising=False)
    monkeypatch.setenv("HERMESX_HOME", str(tmp_path))
    state = tmp_path / "clusters" / "local" / "cluster.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"zk": "127.0.0.1:9"}))
    assert resolve_cluster().zk == "127.0.0.1:9"


def test_no_cluster_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("HERMESX_ZK", raising=False)
    monkeypatch.setenv("HERMESX_HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match="hermesx up"):
        resolve_cluster(None, "nosuch")


def test_unknown_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERMESX_ZKK", "x")
    with pytest.raises(ConfigurationError, match="HERMESX_ZKK"):
        check_environment()
