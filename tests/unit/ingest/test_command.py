"""Who ``ragserve ingest`` writes as (deployments/ingest/command.py: writer): with API keys and
RAGSERVE_API_KEY, that key's tenant (its write scope checked against the keys file), whichever
way the documents go; otherwise the collection as named."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import keys
from deployments.config import AppConfig, AuthConfig
from deployments.errors import ForbiddenError, UnauthorizedError
from deployments.ingest.command import writer
from deployments.ingress.auth import KeyEntry, KeysFile, hash_key, new_key


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[AppConfig, dict[str, str]]:
    """A config with a keys file holding a writer and a reader of tenant acme."""
    entries, tokens = [], {}
    for name, scopes in (("writer", ("query", "write")), ("reader", ("query",))):
        token, key_id = new_key()
        entries.append(KeyEntry(id=key_id, hash=hash_key(token), tenant="acme", scopes=scopes))
        tokens[name] = token
    path = tmp_path / "keys.yaml"
    keys.write(path, KeysFile(keys=entries))
    return AppConfig(auth=AuthConfig(keys_file=str(path))), tokens


def test_an_open_server_has_no_tenant_and_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_API_KEY", "rsk_00000000_" + "0" * 43)  # ignored: nothing to send it to
    assert writer(AppConfig()) == ("", None)


def test_without_a_key_ingest_writes_as_the_operator(keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGSERVE_API_KEY", raising=False)
    assert writer(keyed[0]) == ("", None)


def test_a_writer_key_writes_its_tenant(keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, tokens = keyed
    monkeypatch.setenv("RAGSERVE_API_KEY", tokens["writer"])
    assert writer(cfg) == ("acme", tokens["writer"])
    assert cfg.stored_copy(tenant="acme") == "acme__ragserve"  # what the pipeline then writes


def test_a_key_that_cannot_write_is_refused(keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, tokens = keyed
    monkeypatch.setenv("RAGSERVE_API_KEY", tokens["reader"])
    with pytest.raises(ForbiddenError, match="no 'write' scope"):
        writer(cfg)
    monkeypatch.setenv("RAGSERVE_API_KEY", "rsk_00000000_" + "0" * 43)
    with pytest.raises(UnauthorizedError, match="unknown or revoked"):
        writer(cfg)
