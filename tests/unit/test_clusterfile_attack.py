"""Cluster files shaped to break `hermesx deploy` (docs/DESIGN.md §8): each is refused in one
line naming the key, never with a raw exception or later, on a remote host.

Found by a pass over the parser: a ``[zookeeper]`` host that is a table or a
list raised a bare TypeError; a file that is not UTF-8 a UnicodeDecodeError;
an empty or spaced address, a control character in ``ssh``, ``dir`` or
``ssh_config``, and an empty ``python`` were accepted and failed on the host.
"""

from __future__ import annotations

import pathlib

import pytest

from hermesx.core.errors import ConfigurationError
from hermesx.deploy.clusterfile import load_cluster_file


def _file(host: str, zookeeper: str = '["h1"]', top: str = "") -> str:
    return f"""
cluster = "c1"
{top}
[[host]]
name = "h1"
{host}

[zookeeper]
hosts = {zookeeper}

[[storesite]]
id = "s1"
host = "h1"

[[node]]
name = "n1"
host = "h1"
"""


GOOD_HOST = 'ssh = "root@10.0.0.1"\ndir = "/opt/hx"'


@pytest.mark.parametrize(
    ("host", "zookeeper", "top", "says"),
    [
        (GOOD_HOST, "[{}]", "", "hosts must be a list of host names"),
        (GOOD_HOST, '[["h1"]]', "", "hosts must be a list of host names"),
        (GOOD_HOST, "[1]", "", "hosts must be a list of host names"),
        ('ssh = "root@"\ndir = "/opt/hx"', '["h1"]', "", "address '' is not a host address"),
        (GOOD_HOST + '\naddress = "a b"', '["h1"]', "", "address 'a b' is not a host address"),
        ('ssh = "root@h\\nx"\ndir = "/opt/hx"', '["h1"]', "", "ssh 'root@h\\nx' holds a control"),
        ('ssh = "h"\ndir = "/opt/h\\u0000x"', '["h1"]', "", "holds a control character"),
        (GOOD_HOST + '\npython = " "', '["h1"]', "", "python is empty"),
        (GOOD_HOST, '["h1"]', 'ssh_config = "a\\tb"', "ssh_config 'a\\tb' holds a control"),
    ],
)
def test_bad_fields_are_refused_in_one_line(
    tmp_path: pathlib.Path, host: str, zookeeper: str, top: str, says: str
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(_file(host, zookeeper, top))
    with pytest.raises(ConfigurationError) as caught:
        load_cluster_file(path)
    message = str(caught.value)
    assert says in message and "\n" not in message, message
    assert str(path) in message


def test_a_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b'cluster = "\xff\xfe"\n')
    with pytest.raises(ConfigurationError, match="not UTF-8") as caught:
        load_cluster_file(path)
    assert "\n" not in str(caught.value)


def test_the_good_fields_still_load(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(_file(GOOD_HOST + '\naddress = "10.0.0.9"\npython = "python3.11"'))
    plan = load_cluster_file(path)
    assert plan.hosts["h1"].address == "10.0.0.9"
