"""The process supervisor's pieces that run nothing: the env file."""

from __future__ import annotations

import pytest

from gpumod.supervise.process import env_file_body


def test_env_file_refuses_newlines_and_bad_names():
    with pytest.raises(Exception, match="control character"):
        env_file_body({"K": "a\nb"})
    with pytest.raises(Exception, match="invalid environment variable"):
        env_file_body({"A-B": "x"})
    assert env_file_body({"K": "it's"}) == "K='it'\"'\"'s'\n"
