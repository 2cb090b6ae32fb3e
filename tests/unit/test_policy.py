"""An atom's policies are checked where they enter: values that would mean "never" are refused."""

from __future__ import annotations

import math

import pytest

from hermesx.client.api import parse_checkpoint_policy
from hermesx.core.errors import ConfigurationError
from hermesx.rpc.atom_meta import check_atom_meta, missing_tags, tags_refusal
from hermesx.rpc.proto import hermesx_pb2 as pb


@pytest.mark.parametrize(
    "text",
    [
        "every:0s",
        "every:0",
        "every:-1",
        "every:-5s",
        "every:nans",
        "every:infs",
        "every:1e400s",
        "every:10000000000",
        "every:99999999s",
        "every:",
        "every:s",
        "sometimes",
    ],
)
def test_a_checkpoint_policy_that_would_never_checkpoint_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="checkpoint") as caught:
        parse_checkpoint_policy(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "calls", "seconds"),
    [
        ("every:1", 1, 0.0),
        ("every:100", 100, 0.0),
        ("every:0.5s", 0, 0.5),
        ("every:3600s", 0, 3600),
    ],
)
def test_sensible_periodic_policies_are_kept(text: str, calls: int, seconds: float) -> None:
    policy = parse_checkpoint_policy(text)
    assert policy.mode == pb.CheckpointPolicy.PERIODIC
    assert (policy.every_calls, policy.every_seconds) == (calls, seconds)


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, -math.inf, 1e12])
def test_an_idle_passivation_time_out_of_range_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="idle passivation"):
        check_atom_meta(pb.AtomMeta(idle_passivate_seconds=seconds))


@pytest.mark.parametrize("seconds", [0.0, 0.5, 3600.0])
def test_zero_idle_passivation_means_off_and_positive_times_are_kept(seconds: float) -> None:
    check_atom_meta(pb.AtomMeta(idle_passivate_seconds=seconds))


def test_a_periodic_policy_sent_over_the_wire_is_checked_too() -> None:
    # A caller in another language builds the message itself: the node checks it.
    policy = pb.CheckpointPolicy(mode=pb.CheckpointPolicy.PERIODIC)
    with pytest.raises(ConfigurationError, match="never"):
        check_atom_meta(pb.AtomMeta(checkpoint=policy))
    policy.every_seconds = math.nan
    with pytest.raises(ConfigurationError, match="finite"):
        check_atom_meta(pb.AtomMeta(checkpoint=policy))


def test_tags_refusal_names_the_node_and_the_missing_tags() -> None:
    assert missing_tags(["gpu", "eu"], ["eu"]) == ["gpu"]
    assert tags_refusal("g", "n1", ["gpu"], ["gpu", "ssd"]) == ""
    assert tags_refusal("g", "n1", [], []) == ""
    why = tags_refusal("s1:ab", "n2", ["gpu", "eu"], ["ssd"])
    assert why == "node n2 lacks tag(s) eu,gpu that atom s1:ab requires (node tags: ssd)"


def test_an_unknown_checkpoint_mode_from_the_wire_is_refused() -> None:
    meta = pb.AtomMeta(checkpoint=pb.CheckpointPolicy(mode=7))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="checkpoint policy mode 7 is not one of"):
        check_atom_meta(meta)
