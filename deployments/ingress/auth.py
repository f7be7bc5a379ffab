"""API keys: who is calling, for which tenant, with which scopes and document groups.

Keys are sent as ``Authorization: Bearer <key>`` (what OpenAI clients send, so
``openai.OpenAI(api_key=...)`` just works). A key looks like ``rsk_<id>_<secret>``; the keys file
holds, per id, only the key's SHA-256 (a key is 32 random bytes, so a fast hash is enough: there
is nothing to brute-force), its tenant, scopes, groups and limits. The presented key's hash is
compared with :func:`hmac.compare_digest`. The file is re-read when it changes (checked at most
every ``auth.reload_interval_s``), so keys are added or revoked without a restart; a k8s Secret
mounted as a file updates the same way.

Scopes: ``query`` (retrieve, query, chat, completions, embeddings, generate, models, listing
collections), ``write`` (documents), ``admin`` (creating and dropping collections). Without a
keys file the server is open (every scope, no tenant, no document ACL): allowed on loopback
only, and said so loudly at start (``deployments.stack``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import ConfigError, ForbiddenError, UnauthorizedError

log = logging.getLogger("ray.serve")
Scope = Literal["query", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("query", "write", "admin")
KEY_RE = re.compile(r"^rsk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
TENANT_RE = r"^[a-z][a-z0-9]{0,31}$"
#: Group every document without an ``acl`` belongs to: visible to the whole tenant.
PUBLIC = "*"


class Limits(BaseModel):
    """Per-key limits (``None``: unlimited). Enforced per ingress replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_s: float | None = Field(None, gt=0, description="Sustained requests per second.")
    burst: int | None = Field(None, ge=1, description="Requests allowed at once above the rate (default: 2 s of it).")
    tokens_per_min: int | None = Field(None, ge=1, description="Generated tokens per minute (reserved up front).")
    concurrent_generations: int | None = Field(None, ge=1, description="Generations (streamed or not) at once.")


class KeyEntry(BaseModel):
    """One API key as stored: never the key itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[0-9a-f]{8}$", description="The key's public id (in logs and the audit trail).")
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="SHA-256 of the whole key.")
    tenant: str = Field(pattern=TENANT_RE, description="Tenant whose collections the key sees.")
    scopes: tuple[Scope, ...] = Field(("query",), min_length=1)
    groups: tuple[str, ...] = Field((), description="Document groups the key may read besides public documents.")
    limits: Limits | None = Field(None, description="Overrides auth.default_limits.")
    disabled: bool = False


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KeyEntry] = Field(default_factory=list)


class Principal(BaseModel):
    """Who a request comes from."""

    model_config = ConfigDict(frozen=True)
    key_id: str
    tenant: str = Field(description="'' when the server runs without keys (one namespace, no ACLs).")
    scopes: frozenset[str]
    groups: tuple[str, ...] | None = Field(description="Groups to filter documents by; None: no ACL filter.")
    limits: Limits = Field(default_factory=Limits)

    @property
    def label(self) -> str:
        """The bounded ``tenant`` metric label (tenants come from the keys file, never from a request)."""
        return self.tenant or "open"

    def collection(self, name: str) -> str:
        """The stored collection behind a collection name this principal uses: its tenant's own."""
        return f"{self.tenant}__{name}" if self.tenant else name

    def visible(self, stored: str) -> str | None:
        """The name this principal knows a stored collection by, or None when it is another tenant's."""
        if not self.tenant:
            return stored  # one namespace: everything is this server's
        prefix = f"{self.tenant}__"
        return stored[len(prefix):] if stored.startswith(prefix) else None

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(f"this key has no '{scope}' scope (it has: {', '.join(sorted(self.scopes))})")


#: The principal of a server without keys (loopback only).
OPEN = Principal(key_id="open", tenant="", scopes=frozenset(SCOPES), groups=None)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its id (the key is shown once; only its hash is stored)."""
    key_id = secrets.token_hex(4)
    return f"rsk_{key_id}_{secrets.token_urlsafe(32)}", key_id


class KeyStore:
    """The keys file, re-read when it changes.

    Args:
        path: the YAML keys file (see the module docstring; ``ragserve keys`` writes it).
        default_limits: limits of keys that set none.
        reload_interval_s: how often the file's modification time is checked.
    """

    def __init__(self, path: str | Path, default_limits: Limits = Limits(), reload_interval_s: float = 5.0) -> None:
        self.path = Path(path)
        self.default_limits = default_limits
        self.reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._entries: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._load(force=True)

    def _load(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if force:
                raise ConfigError(f"auth.keys_file {self.path}: {e.strerror}") from None
            log.error("keys file %s unreadable (%s): keeping the keys loaded before", self.path, e)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return
        try:
            parsed = KeysFile.model_validate(yaml.safe_load(self.path.read_text(encoding="utf-8")) or {})
        except (ValidationError, yaml.YAMLError) as e:
            if force:
                raise ConfigError(f"auth.keys_file {self.path} is invalid: {e}") from None
            log.error("keys file %s is invalid, keeping the keys loaded before: %s", self.path, e)
            return
        self._entries = {k.id: k for k in parsed.keys}
        self._stamp = stamp
        log.info("loaded %d API keys from %s", len(self._entries), self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.reload_interval_s:
            with self._lock:
                if now - self._checked >= self.reload_interval_s:
                    self._checked = now
                    self._load()

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted({e.tenant for e in self._entries.values()}))

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header.

        Raises:
            UnauthorizedError: no header, not a bearer key, unknown, revoked or disabled key.
        """
        self._maybe_reload()
        if not authorization:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <key>'")
        m = KEY_RE.match(key.strip())
        entry = self._entries.get(m.group(1)) if m else None
        # Compare even when the id is unknown, so an unknown id costs the same time as a wrong key.
        expected = entry.hash if entry else hash_key("rsk_00000000_" + "0" * 43)
        if not hmac.compare_digest(hash_key(key.strip()), expected) or entry is None or entry.disabled:
            raise UnauthorizedError("unknown or revoked API key")
        return Principal(key_id=entry.id, tenant=entry.tenant, scopes=frozenset(entry.scopes),
                         groups=(PUBLIC, *entry.groups), limits=entry.limits or self.default_limits)
