"""`hermesx node serve --call-limit NAME=NUMBER`: the call listener's limits a test shortens.

See docs/DESIGN.md §4.1 "Limits". A setting changes that limit only; a name
that is no limit, or a value that is not a positive number of its kind, is
refused with one line naming the setting.
"""

from __future__ import annotations

import pytest

from hermesx.cli.serve import _call_limits
from hermesx.core.errors import ConfigurationError
from hermesx.rpc.callserver import CallLimits


def test_settings_change_only_the_limits_named() -> None:
    limits = _call_limits(["frame_s=3", "write_stall_s=8", "max_connections=64"])
    assert (limits.frame_s, limits.write_stall_s, limits.max_connections) == (3.0, 8.0, 64)
    assert limits.first_frame_s == CallLimits().first_frame_s
    assert _call_limits([]) == CallLimits()


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("frame=3", "no limit 'frame'"),
        ("frame_s", "frame_s takes a positive float"),
        ("frame_s=soon", "frame_s takes a positive float"),
        ("frame_s=0", "frame_s takes a positive float"),
        ("write_stall_s=inf", "write_stall_s takes a positive float"),
        ("max_connections=1.5", "max_connections takes a positive int"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(setting: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        _call_limits([setting])
    assert said in str(refused.value) and repr(setting) in str(refused.value)
    assert "\n" not in str(refused.value)
