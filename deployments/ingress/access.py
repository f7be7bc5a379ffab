"""Access control at the front door: who calls (``auth``), what they may do, how much (``limits``).

Every protected route takes a :class:`~deployments.ingress.auth.Principal` through
:meth:`Access.requires` (a FastAPI dependency): the key is checked, its scope, then its request
rate — before the route does any work. The principal then travels with the work: its tenant
picks the collections, its groups become the mandatory document filter, its limits bound the
generations. Writes and admin calls leave one audit line each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deployments import metrics
from deployments.config import AuthConfig
from deployments.errors import RagServeError
from deployments.ingress.auth import OPEN, KeyStore, Limits, Principal, Scope
from deployments.ingress.limits import RateLimiter

log = logging.getLogger("ray.serve")
#: Documents the bearer scheme in /openapi.json; auto_error off: a missing key is our own 401.
BEARER = HTTPBearer(auto_error=False, description="An API key (`ragserve keys create`); not needed on an open "
                    "loopback server.")


class Access:
    """The keys, the limiter and the audit trail of one ingress replica.

    Args:
        cfg: the ``auth`` config (no keys file and not ``keys`` mode: an open server).
        clock: the limiter's clock (injected by tests).
    """

    def __init__(self, cfg: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        defaults = Limits(**cfg.default_limits.model_dump())
        self.store = None if cfg.open else KeyStore(cfg.keys_file, defaults, cfg.reload_interval_s)
        self.limiter = RateLimiter(clock)

    def principal(self, authorization: str | None) -> Principal:
        """The caller (open server: everyone is :data:`~deployments.ingress.auth.OPEN`)."""
        return OPEN if self.store is None else self.store.authenticate(authorization)

    def requires(self, scope: Scope) -> Any:
        """A dependency admitting callers with ``scope`` within their request rate."""
        async def dependency(request: Request,
                             _: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Principal:
            who: Principal | None = None
            try:
                who = self.principal(request.headers.get("authorization"))
                who.require(scope)
                self.limiter.request(who)
            except RagServeError as e:
                metrics.inc("rag_tenant_rejections_total", tenant=who.label if who else "unknown",
                            reason=e.type)
                raise
            request.scope.setdefault("state", {})["tenant"] = who.label
            return who

        return Depends(dependency)

    @staticmethod
    def audit(request: Request, who: Principal, target: str, status: int) -> None:
        """One line per write or admin call: key, tenant, route, target, outcome."""
        log.info("audit %s", json.dumps({
            "key": who.key_id, "tenant": who.label, "method": request.method, "route": request.url.path,
            "target": target, "status": status, "request_id": request.scope.get("state", {}).get("request_id")},
            ensure_ascii=False, sort_keys=True))
