"""An open server (no API keys) is refused beyond loopback unless auth.mode says off."""

from __future__ import annotations

import logging

import pytest

from deployments.config import parse_app_config
from deployments.errors import ConfigError
from deployments.stack import check_exposure


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "ragserve.example.org"])
def test_open_beyond_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        check_exposure(parse_app_config({}), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.7"])
def test_open_on_loopback_runs_loudly(host: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_exposure(parse_app_config({}), host)
    assert "WITHOUT API keys" in caplog.text


def test_keys_or_an_explicit_off_allow_any_address(tmp_path) -> None:
    check_exposure(parse_app_config({"auth": {"keys_file": str(tmp_path / "keys.yaml")}}), "0.0.0.0")
    check_exposure(parse_app_config({"auth": {"mode": "off"}}), "0.0.0.0")
    with pytest.raises(ConfigError, match="keys_file"):
        parse_app_config({"auth": {"mode": "keys"}})
