"""Sequential clients in threads: each kind of request sent back to back by its own client until
stopped, every outcome kept.

For runs that change the app while it is being asked (a rolling update, an encoder switch): one
request of each kind in flight at a time, as a steady trickle of users, so that any request the
change breaks shows up as a failed outcome rather than as lower throughput.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx


@dataclass
class SequentialClients:
    """One thread per kind in :attr:`kinds`, each calling :meth:`ask` back to back (with
    :attr:`pause_s` between calls) on its own ``httpx.Client`` until :meth:`stop`.

    Subclasses set ``kinds`` and implement :meth:`ask`, which returns the outcome to keep (it
    catches the transport errors it wants to record as failures).
    """

    url: str
    timeout_s: float = 180.0
    outcomes: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _crashed: list[str] = field(default_factory=list)

    kinds: ClassVar[tuple[str, ...]] = ()
    pause_s: ClassVar[float] = 0.0

    def ask(self, kind: str, client: httpx.Client) -> Any:
        """One request of ``kind``; returns its outcome."""
        raise NotImplementedError

    def start(self) -> "SequentialClients":
        """Starts one client thread per kind; returns ``self``."""
        for kind in self.kinds:
            t = threading.Thread(target=self._loop, args=(kind,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, join_s: float = 200.0) -> list[Any]:
        """Stops the clients after their current request; returns every outcome.

        Raises:
            RuntimeError: a client did not finish its request within ``join_s`` (it hung), or
                :meth:`ask` raised (a client that stopped early would hide its kind's failures).
        """
        self._stop.set()
        for t in self._threads:
            t.join(timeout=join_s)
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError("a client hung")
        if self._crashed:
            raise RuntimeError(f"clients stopped by an error: {self._crashed}")
        return self.outcomes

    def _loop(self, kind: str) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
                while not self._stop.is_set():
                    self.outcomes.append(self.ask(kind, client))
                    time.sleep(self.pause_s)
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self._crashed.append(f"{kind}: {type(e).__name__}: {e}")
