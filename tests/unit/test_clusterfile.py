"""The cluster file of `hermesx deploy` (docs/DESIGN.md §8): what it accepts, what it refuses."""

from __future__ import annotations

import pathlib

import pytest

from hermesx.core.errors import ConfigurationError
from hermesx.deploy.clusterfile import ClusterPlan, load_cluster_file

GOOD = """
cluster = "prod"
ssh_config = "ssh/config"

[[host]]
name = "h1"
ssh = "root@10.0.0.11"
dir = "/opt/hx"
tags = ["eu"]

[[host]]
name = "h2"
ssh = "h2"
address = "10.0.0.12"
dir = "/opt/hx/"

[[host]]
name = "h3"
ssh = "root@10.0.0.13"
dir = "/srv/hx"

[zookeeper]
hosts = ["h1", "h2", "h3"]

[[storesite]]
id = "s1"
host = "h1"

[[storesite]]
id = "s2"
host = "h2"

[[node]]
name = "n1"
host = "h1"
tags = ["gpu"]

[[node]]
name = "n2"
host = "h2"
"""


def _load(tmp_path: pathlib.Path, text: str) -> ClusterPlan:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return load_cluster_file(path)


def _refused(tmp_path: pathlib.Path, text: str, *expected: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message and "cluster.toml" in message, message
    for part in expected:
        assert part in message, message
    return message


def test_a_good_file_gives_the_plan(tmp_path: pathlib.Path) -> None:
    plan = _load(tmp_path, GOOD)
    assert plan.cluster == "prod" and plan.secure
    # A secure cluster (the default) reaches ZooKeeper on its TLS port.
    assert plan.zk_connect == "10.0.0.11:2281,10.0.0.12:2281,10.0.0.13:2281"
    assert plan.hosts["h2"].address == "10.0.0.12" and plan.hosts["h2"].dir == "/opt/hx"
    assert plan.node_tags(plan.nodes[0]) == ("eu", "gpu")
    assert plan.parts_on("h1") == ["zookeeper", "storesite-s1", "node-n1"]
    assert plan.ssh_config == tmp_path / "ssh" / "config"


def test_an_unknown_key_is_named_with_the_known_ones(tmp_path: pathlib.Path) -> None:
    _refused(tmp_path, GOOD.replace('tags = ["gpu"]', 'tag = ["gpu"]'), "node n1", "'tag'", "tags")
    _refused(tmp_path, "colour = 1\n" + GOOD, "unknown key 'colour'")


def test_a_duplicate_host_is_refused(tmp_path: pathlib.Path) -> None:
    text = GOOD.replace('name = "h3"', 'name = "h2"')
    _refused(tmp_path, text, "host h2 is listed twice")


def test_two_storesites_with_one_id_are_refused_naming_both_hosts(tmp_path: pathlib.Path) -> None:
    text = GOOD.replace('id = "s2"', 'id = "s1"')
    _refused(tmp_path, text, "two storesites have id s1", "h1", "h2")


def test_an_ensemble_of_two_is_refused(tmp_path: pathlib.Path) -> None:
    text = GOOD.replace('hosts = ["h1", "h2", "h3"]', 'hosts = ["h1", "h2"]')
    _refused(tmp_path, text, "ensemble of 2", "1, 3 or 5")


def test_a_part_on_an_unlisted_host_is_refused(tmp_path: pathlib.Path) -> None:
    text = GOOD.replace('name = "n2"\nhost = "h2"', 'name = "n2"\nhost = "h9"')
    _refused(tmp_path, text, "node n2", "'h9'", "h1, h2, h3")


def test_two_parts_on_one_port_of_a_host_are_refused(tmp_path: pathlib.Path) -> None:
    text = GOOD + '\n[[node]]\nname = "n3"\nhost = "h1"\n'
    _refused(tmp_path, text, "node n3 and node n1 both want port 7000 on host h1")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('dir = "/srv/hx"', 'dir = "srv/hx"', "absolute path"),
        ('cluster = "prod"', "cluster = 5", "cluster must be str"),
        ('id = "s2"', 'id = "bad id"', "storesite"),
        ("[[storesite]]", "[[storesites]]", "unknown key 'storesites'"),
    ],
)
def test_bad_values_are_refused_naming_the_entry(
    tmp_path: pathlib.Path, old: str, new: str, expected: str
) -> None:
    _refused(tmp_path, GOOD.replace(old, new, 1), expected)


def test_broken_toml_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    _refused(tmp_path, "cluster = \n", "not valid TOML")
