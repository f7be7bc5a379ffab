"""API keys: the keys file, bearer authentication, reload without restart, scopes, namespaces."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest
import yaml

from deployments import keys as keys_cli
from deployments.errors import ConfigError, ForbiddenError, UnauthorizedError
from deployments.ingress.auth import OPEN, KeyStore, Limits, hash_key, new_key


def create(path: Path, capsys: pytest.CaptureFixture[str], tenant: str = "acme", scopes: str = "query",
           groups: str = "", rps: float | None = None) -> str:
    parser = argparse.ArgumentParser()
    keys_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["keys", "create", "--file", str(path), "--tenant", tenant, "--scopes", scopes,
                              "--groups", groups] + (["--rps", str(rps)] if rps else []))
    assert args.fn(args) == 0
    return capsys.readouterr().out.strip()


def test_a_created_key_authenticates_and_only_its_hash_is_stored(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    key = create(path, capsys, scopes="query,write", groups="hr,legal", rps=5)
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    who = KeyStore(path).authenticate(f"Bearer {key}")
    assert (who.tenant, who.scopes, who.groups) == ("acme", frozenset({"query", "write"}), ("*", "hr", "legal"))
    assert who.limits.requests_per_s == 5 and who.key_id == key.split("_")[1]
    assert KeyStore(path).authenticate(f"bearer   {key}").key_id == who.key_id  # scheme case and spaces


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc",
                                    "Bearer rsk_00000000_" + "A" * 43, "Bearer not-a-key", "Bearer " + "x" * 10_000,
                                    "Bearer rsk_ünïcode"])
def test_missing_malformed_or_unknown_keys_are_401(tmp_path: Path, capsys, header: str | None) -> None:
    path = tmp_path / "keys.yaml"
    create(path, capsys)
    with pytest.raises(UnauthorizedError) as err:
        KeyStore(path).authenticate(header)
    assert err.value.status == 401


def test_a_key_of_another_id_with_a_valid_shape_is_401(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    key = create(path, capsys)
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # right id, wrong secret
    with pytest.raises(UnauthorizedError):
        KeyStore(path).authenticate(f"Bearer {forged}")


def test_keys_are_added_and_revoked_without_a_restart(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    first = create(path, capsys)
    store = KeyStore(path, reload_interval_s=0.01)
    second = create(path, capsys, tenant="globex")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a filesystem with coarse mtimes
    time.sleep(0.02)
    assert store.authenticate(f"Bearer {second}").tenant == "globex"
    args = argparse.Namespace(file=path, key_id=first.split("_")[1])
    assert keys_cli.cmd_revoke(args) == 0
    time.sleep(0.02)
    with pytest.raises(UnauthorizedError):
        store.authenticate(f"Bearer {first}")
    assert store.tenants == ("acme", "globex")


def test_a_broken_file_keeps_the_keys_loaded_before(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    key = create(path, capsys)
    store = KeyStore(path, reload_interval_s=0.01)
    path.write_text("keys: [{id: nope}]\n")
    time.sleep(0.02)
    assert store.authenticate(f"Bearer {key}").tenant == "acme"
    with pytest.raises(ConfigError):
        KeyStore(path)  # at start an invalid file is an error, not an empty key set
    with pytest.raises(ConfigError):
        KeyStore(tmp_path / "missing.yaml")


def test_scopes_are_checked() -> None:
    key, _ = new_key()
    assert key.startswith("rsk_") and len(key) == 56
    who = OPEN.model_copy(update={"scopes": frozenset({"query"})})
    who.require("query")
    with pytest.raises(ForbiddenError) as err:
        who.require("admin")
    assert err.value.status == 403 and "admin" in err.value.message


def test_collections_stay_in_their_tenants_namespace() -> None:
    acme = OPEN.model_copy(update={"tenant": "acme"})
    assert acme.collection("manuals") == "acme__manuals"
    assert acme.collection("globex__manuals") == "acme__globex__manuals"  # a name cannot leave the namespace
    assert acme.visible("acme__manuals") == "manuals" and acme.visible("globex__manuals") is None
    assert acme.visible("manuals") is None
    assert OPEN.collection("manuals") == "manuals" and OPEN.visible("globex__manuals") == "globex__manuals"
    assert Limits().requests_per_s is None and yaml.safe_load("keys: []") == {"keys": []}
