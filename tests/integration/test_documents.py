"""Documents and collections on the real stack: the HTTP write path, atomic replace, delete,
metadata filters (and injection attempts), several collections, and bulk ingestion with Ray
Data (formats, bad files, re-runs, and an ingest killed midway then re-run).

The HTTP tests use the session stack; the bulk tests run ``ragserve ingest`` as users do, in a
subprocess with its own local Ray, against the session's milvus-lite server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

WORDS = ("pump valve seal gasket rotor bearing impeller housing flange coupling motor shaft sensor "
         "relay filter nozzle manifold bracket spring washer").split()


def _text(marker: str, sentences: int) -> str:
    """Distinct, deterministic prose: ``sentences`` sentences each carrying ``marker``."""
    return " ".join(f"The {WORDS[i % len(WORDS)]} {marker} record {i} describes part {marker}-{i} "
                    f"and its {WORDS[(i * 7) % len(WORDS)]} in detail." for i in range(sentences))


def _post_docs(stack, docs: list[dict], collection: str | None = None, status: int = 200) -> dict:
    body: dict = {"documents": docs}
    if collection:
        body["collection"] = collection
    r = stack.client.post("/v1/documents", json=body)
    assert r.status_code == status, r.text
    return r.json()


def _retrieve(stack, question: str, **kw) -> list[dict]:
    r = stack.client.post("/v1/retrieve", json={"question": question, **kw})
    assert r.status_code == 200, r.text
    return r.json()["sources"]


@pytest.fixture(scope="module")
def coll(stack) -> str:
    """A collection of this module's own, dropped at the end."""
    r = stack.client.post("/v1/collections", json={"name": "it_docs"})
    assert r.status_code in (200, 201), r.text
    yield "it_docs"
    stack.client.delete("/v1/collections/it_docs")


# --------------------------------------------------------------------------- collections
def test_collections_create_list_drop(stack) -> None:
    r = stack.client.post("/v1/collections", json={"name": "it_tmp"})
    assert (r.status_code, r.json()) == (201, {"name": "it_tmp", "created": True})
    assert stack.client.post("/v1/collections", json={"name": "it_tmp"}).json()["created"] is False
    names = {c["name"] for c in stack.client.get("/v1/collections").json()["collections"]}
    assert {"it_tmp", stack.cfg.search.milvus.collection} <= names
    assert stack.client.delete("/v1/collections/it_tmp").json() == {"name": "it_tmp", "dropped": True}
    r = stack.client.delete("/v1/collections/it_tmp")
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = stack.client.post("/v1/retrieve", json={"question": "pump", "collection": "it_tmp"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "collection"
    for bad in ("1abc", "a-b", "x" * 300, "a b"):
        r = stack.client.post("/v1/collections", json={"name": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "name", (bad, r.text)
    assert stack.client.delete("/v1/collections/bad-name").status_code == 400


def test_collections_are_separate(stack, coll: str) -> None:
    _post_docs(stack, [{"id": "only-here", "text": "The zephyrine gauge of line nine reads 12 kPa.",
                        "title": "Zephyrine gauge"}], coll)
    here = _retrieve(stack, "zephyrine gauge", collection=coll, mode="lexical")
    assert here and here[0]["doc_id"] == "only-here"
    default = _retrieve(stack, "zephyrine gauge", mode="lexical")  # the sample corpus collection
    assert all(s["doc_id"] != "only-here" for s in default)


# --------------------------------------------------------------------------- documents
def test_upsert_unchanged_update_delete(stack, coll: str) -> None:
    doc = {"id": "manual-7", "text": _text("alpha", 40), "title": "Manual seven", "tags": ["manual"],
           "source": "kb/manual-7.md", "created_at": "2025-02-03"}
    first = _post_docs(stack, [doc], coll)["results"][0]
    assert first["status"] == "added" and first["chunks"] >= 3
    assert _post_docs(stack, [doc], coll)["results"][0] == {**first, "status": "unchanged"}
    hits = _retrieve(stack, "alpha record", collection=coll, filter={"doc_ids": ["manual-7"]}, top_k=50)
    assert len(hits) == first["chunks"]
    assert {h["version"] for h in hits} and len({h["version"] for h in hits}) == 1
    assert hits[0]["tags"] == ["manual"] and hits[0]["created_at"] == 1738540800  # 2025-02-03 UTC

    shorter = {**doc, "text": _text("beta", 8)}
    upd = _post_docs(stack, [shorter], coll)["results"][0]
    assert upd["status"] == "updated" and upd["chunks"] < first["chunks"]
    hits = _retrieve(stack, "record", collection=coll, filter={"doc_ids": ["manual-7"]}, top_k=50)
    assert len(hits) == upd["chunks"] and all("beta" in h["text"] for h in hits)  # no stale chunk left

    r = stack.client.delete("/v1/documents/manual-7", params={"collection": coll})
    assert r.json() == {"id": "manual-7", "collection": coll, "deleted_chunks": upd["chunks"]}
    assert _retrieve(stack, "record", collection=coll, filter={"doc_ids": ["manual-7"]}) == []
    assert stack.client.delete("/v1/documents/manual-7", params={"collection": coll}).status_code == 404


@pytest.mark.parametrize(("body", "param"), [
    ({"documents": []}, "documents"),
    ({"documents": [{"id": "a b", "text": "x"}]}, "documents.0.id"),
    ({"documents": [{"id": "a", "text": ""}]}, "documents.0.text"),
    ({"documents": [{"id": "a", "text": "x", "tags": "t"}]}, "documents.0.tags"),
    ({"documents": [{"id": "a", "text": "x", "created_at": "yesterday"}]}, "documents.0.created_at"),
    ({"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "documents"),
    ({"documents": [{"id": "a", "text": "x", "owner": "me"}]}, "documents.0.owner"),
    ({"collection": "no such", "documents": [{"id": "a", "text": "x"}]}, "collection"),
])
def test_bad_documents_are_400(stack, body: dict, param: str) -> None:
    r = stack.client.post("/v1/documents", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_documents_limits_and_missing_collection(stack) -> None:
    n = stack.cfg.ingest.max_documents_per_request + 1
    r = stack.client.post("/v1/documents", json={"documents": [{"id": f"d{i}", "text": "x"} for i in range(n)]})
    assert r.status_code == 413
    r = stack.client.post("/v1/documents", json={"collection": "never_made", "documents": [{"id": "a", "text": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "collection"


def test_replace_is_atomic_for_concurrent_readers(stack, coll: str) -> None:
    """While a document flips between a 6-chunk and a 2-chunk version, every search filtered to
    it sees exactly one version's chunks, all of them that match, never a mix and never none."""
    versions = [{"id": "flip", "text": _text("gamma", 70), "title": "Flip"},
                {"id": "flip", "text": _text("delta", 12), "title": "Flip"}]
    counts = [_post_docs(stack, [v], coll)["results"][0]["chunks"] for v in reversed(versions)][::-1]
    assert counts[0] > counts[1] >= 1
    stop, seen, bad = threading.Event(), [], []

    def reader() -> None:
        import httpx

        with httpx.Client(base_url=stack.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/retrieve", json={"question": "record part detail", "collection": coll,
                                                 "top_k": 50, "mode": "dense", "filter": {"doc_ids": ["flip"]}})
                if r.status_code != 200:  # recorded, not raised: an exception would end the thread unseen
                    bad.append((r.status_code, r.text[:200]))
                    continue
                hits = r.json()["sources"]
                markers = {("gamma" in h["text"], "delta" in h["text"]) for h in hits}
                seen.append(len(hits))
                if len(markers) != 1 or len({h["version"] for h in hits}) != 1 or len(hits) not in counts:
                    bad.append((r.status_code, len(hits), markers))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 13):  # versions[0] is stored now: start with the other one
            assert _post_docs(stack, [versions[i % 2]], coll)["results"][0]["status"] == "updated"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(seen) >= 12 and set(seen) == set(counts), set(seen)  # both versions were observed
    assert not bad, bad[:5]


def _search_replicas() -> set[int]:
    """Pids of the app's search replicas (by process title: the stack runs no dashboard)."""
    from deployments.reliability.procs import app_processes

    return {p.pid for p, role in app_processes() if role == "ServeReplica:ragserve:search"}


def test_a_write_cut_by_a_killed_search_replica_leaves_one_whole_version(stack, coll: str) -> None:
    """A document write whose search replica is SIGKILLed while it runs (at 30, 60 and 90 % of
    a write's measured duration, so most kills land in the search stage's upsert): once the
    replica is replaced, the document is its old version or its new one, whole, never a mix; a
    write that answered 200 is the new one; none is blamed on the client (no 4xx). How each write
    ended is printed (the kill's timing depends on the machine, so no outcome is required)."""
    versions = [{"id": "cut", "text": _text("gamma", 300), "title": "Cut"},
                {"id": "cut", "text": _text("delta", 12), "title": "Cut"}]
    counts, took = [], []
    for v in reversed(versions):
        t0 = time.monotonic()
        counts.insert(0, _post_docs(stack, [v], coll)["results"][0]["chunks"])
        took.append(time.monotonic() - t0)
    assert counts[0] <= 50, counts  # every chunk fits one search (max_top_k)
    write_s = max(took)  # the larger version's write, the one that takes longest
    stored = 0  # versions[0] was written last
    for fraction in (0.3, 0.6, 0.9):
        victims = _search_replicas()
        assert len(victims) == 1, victims
        outcome: dict = {}

        def write(new: dict = versions[1 - stored]) -> None:
            import httpx

            try:
                outcome["r"] = httpx.post(f"{stack.url}/v1/documents", json={"documents": [new], "collection": coll},
                                          timeout=120)
            except httpx.HTTPError as e:
                outcome["error"] = e

        t = threading.Thread(target=write)
        t.start()
        time.sleep(fraction * write_s)
        os.kill(victims.pop(), signal.SIGKILL)
        t.join(150)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # replaced, and answering this collection's searches
            if _search_replicas() and stack.client.get("/readyz", timeout=15).status_code == 200:
                r = stack.client.post("/v1/retrieve", json={"question": "record part detail", "collection": coll,
                                                            "top_k": 50, "mode": "dense",
                                                            "filter": {"doc_ids": ["cut"]}},
                                      headers={"cache-control": "no-cache"})
                if r.status_code == 200:
                    break
            time.sleep(2)
        else:
            raise AssertionError("the search replica was not replaced within 180 s")
        hits = r.json()["sources"]
        markers = {("gamma" in h["text"], "delta" in h["text"]) for h in hits}
        assert len(markers) == 1 and len({h["version"] for h in hits}) == 1, (fraction, markers)
        now = 0 if markers == {(True, False)} else 1
        assert len(hits) == counts[now], (fraction, len(hits), counts)  # whole: every chunk of that version
        status = outcome["r"].status_code if "r" in outcome else None
        print(f"\n[cut write] kill at {fraction:.0%} of a {write_s:.2f} s write: answered "
              f"{status or outcome.get('error')!r}; stored: {'new' if now != stored else 'old'} version "
              f"({len(hits)} chunks)")
        assert status is None or status == 200 or status >= 500, outcome["r"].text
        if status == 200:
            assert now != stored, "a write acknowledged with 200 was lost"
        stored = now


# --------------------------------------------------------------------------- a write cut inside its upsert
#: Unread bytes on the search replica's Milvus connection that only an upsert of document chunks
#: reaches: the other calls of a write (a query, the delete of a version token) send well under
#: 2 KiB; the upserts below (a few dozen rows of 384 floats, tombstones too) send about 50 KiB
#: and more, of which a stopped Milvus holds all, or at least the 64 KiB that HTTP/2 lets a
#: stream send before its reader answers.
UPSERT_BYTES = 16 * 1024


class _Conn(NamedTuple):
    """One TCP connection to Milvus: bytes sent each way and not yet read by the other end."""
    client_port: int
    client_inode: int
    unread_at_milvus: int
    unread_at_client: int


def _milvus_connections(port: int) -> list[_Conn]:
    """The connections to the Milvus server on ``port``, from ``/proc/net/tcp``: this network
    namespace's sockets, the stack's too (the tests run in its namespace)."""
    server: dict[int, int] = {}
    clients: dict[int, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] != "01":  # TCP_ESTABLISHED
                    continue
                local, remote = (int(f[i].rsplit(":", 1)[1], 16) for i in (1, 2))
                rx = int(f[4].split(":")[1], 16)  # tx_queue:rx_queue
                if local == port:
                    server[remote] = rx
                elif remote == port:
                    clients[local] = (int(f[9]), rx)
    return [_Conn(p, inode, server.get(p, 0), rx) for p, (inode, rx) in clients.items()]


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of ``pid``'s sockets (to tell its connections in ``/proc/net/tcp``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _thread_states(pid: int) -> list[str]:
    """The state letter of each thread of ``pid`` (``/proc/PID/task/*/stat``)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def _stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it has stopped (the signal is asynchronous)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while not all(s in "tTZX" for s in _thread_states(pid)):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.001)


def _hold_at_upsert(milvus: int, port: int, replica: int, writing: threading.Event) -> int:
    """Run the search replica and the (stopped) Milvus server in turns, never both at once, until
    the replica has sent more than UPSERT_BYTES on its Milvus connection: its upsert. Returns the
    bytes of it waiting unread in Milvus's socket, with both processes stopped.

    Every request the replica sends meets a stopped Milvus, so it waits whole in the socket and its
    size can be read (``rx_queue``) once the replica is stopped too. A small one (a query, a delete,
    HTTP/2 pings) is let through: Milvus runs, the replica stopped, until it has read everything,
    every thread of it sleeps, and the replica's answer has come (or, for a ping, Milvus stayed
    idle a few polls); then Milvus is stopped before the replica runs on. So when the upsert is
    sent, Milvus can have read none of it, and the replica is inside the call until it dies.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert writing.is_set(), "the write ended before its upsert reached Milvus"
        if not any(c.unread_at_milvus for c in _milvus_connections(port)):
            time.sleep(0.002)  # the replica is not calling Milvus (e.g. the encoder is at work)
            continue
        _stop(replica)
        mine = _socket_inodes(replica)
        conns = [c for c in _milvus_connections(port) if c.client_inode in mine]
        unread = max((c.unread_at_milvus for c in conns), default=0)
        if unread > UPSERT_BYTES:
            return unread
        answered, quiet = sum(c.unread_at_client for c in conns), 0
        os.kill(milvus, signal.SIGCONT)
        while quiet < 20:
            conns = _milvus_connections(port)
            idle = (not any(c.unread_at_milvus for c in conns)
                    and all(s == "S" for s in _thread_states(milvus)))  # all read, every thread sleeping
            if idle and sum(c.unread_at_client for c in conns if c.client_inode in mine) > answered:
                break  # the replica's answer has come
            # No answer is due to HTTP/2 frames (pings, window updates) or another client's call:
            # then Milvus idle for 20 polls ends the turn. Ending one early can only make the
            # replica's call time out (the write then ends, and the loop's first assert says so).
            quiet = quiet + 1 if idle else 0
            time.sleep(0.001)
        _stop(milvus)
        os.kill(replica, signal.SIGCONT)
    raise AssertionError("the write's upsert did not reach Milvus within 120 s")


def _search_when_replaced(stack, coll: str, doc_id: str) -> list[dict]:
    """The document's hits once the killed search replica is replaced and answers this collection."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if _search_replicas() and stack.client.get("/readyz", timeout=15).status_code == 200:
            body = {"question": "record part detail", "collection": coll, "top_k": 50, "mode": "dense",
                    "filter": {"doc_ids": [doc_id]}}
            r = stack.client.post("/v1/retrieve", json=body, headers={"cache-control": "no-cache"})
            if r.status_code == 200:
                return r.json()["sources"]
        time.sleep(2)
    raise AssertionError("the search replica was not replaced within 180 s")


def test_a_write_cut_inside_its_milvus_upsert_leaves_one_whole_version(stack, coll: str) -> None:
    """The search replica is SIGKILLed while it is provably inside the Milvus upsert of a document
    replacement: the document is then its old version or its new one, whole, never a mix; the
    write answers 503/504 (in the one error shape) or 200, and a 200 means the new version.

    How the kill is placed, without timing: Milvus is stopped (SIGSTOP) before the write, and
    :func:`_hold_at_upsert` lets the write's small calls through one at a time while the replica
    is stopped, until the replica has sent a request of more than UPSERT_BYTES; that request
    sits unread in Milvus's socket when the replica is killed, and Milvus runs on only after.
    Two rounds, each writing the version that is not stored (a 1-chunk version over ~30 chunks:
    an upsert of mostly tombstones; then the other way, unless the first round kept the old one).
    What each round ended with is printed: which version is kept depends on whether the whole
    upsert was in the kernel's buffers at the kill (the dead replica's socket still delivers it,
    and Milvus applies it) or part of it was still held back by HTTP/2 flow control."""
    versions = [{"id": "cut-upsert", "text": _text("gamma", 300), "title": "Cut"},
                {"id": "cut-upsert", "text": _text("delta", 12), "title": "Cut"}]
    counts = [_post_docs(stack, [v], coll)["results"][0]["chunks"] for v in reversed(versions)][::-1]
    assert counts[0] <= 50, counts  # every chunk fits one search (max_top_k)
    milvus, port = stack.milvus.proc.pid, stack.milvus.port
    assert stack.milvus.proc.poll() is None
    stored = 0  # versions[0] was written last
    for round_ in (1, 2):
        victims = _search_replicas()
        assert len(victims) == 1, victims
        replica = victims.pop()
        outcome: dict = {}
        writing = threading.Event()

        def write(new: dict = versions[1 - stored], outcome: dict = outcome,
                  writing: threading.Event = writing) -> None:
            import httpx

            try:
                outcome["r"] = httpx.post(f"{stack.url}/v1/documents", timeout=120,
                                          json={"documents": [new], "collection": coll})
            except httpx.HTTPError as e:
                outcome["error"] = e
            finally:
                writing.clear()

        t = threading.Thread(target=write)
        _stop(milvus)
        try:
            writing.set()
            t.start()
            unread = _hold_at_upsert(milvus, port, replica, writing)
            os.kill(replica, signal.SIGKILL)  # both stopped: the upsert is sent, unanswered
        finally:
            # Never leave the session's Milvus (or a live replica) stopped: later tests use them.
            os.kill(milvus, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(replica, signal.SIGCONT)
        t.join(150)
        assert not t.is_alive(), "the write did not answer within 150 s"
        hits = _search_when_replaced(stack, coll, "cut-upsert")
        markers = {("gamma" in h["text"], "delta" in h["text"]) for h in hits}
        assert len(markers) == 1 and len({h["version"] for h in hits}) == 1, (round_, markers)
        now = 0 if markers == {(True, False)} else 1
        assert len(hits) == counts[now], (round_, len(hits), counts)  # whole: every chunk of that version
        r = outcome.get("r")
        status = r.status_code if r is not None else None
        print(f"\n[cut inside upsert] round {round_}: replica killed with {unread} B of its upsert unread at "
              f"Milvus; the write answered {status or outcome.get('error')!r}; stored: "
              f"{'new' if now != stored else 'old'} version ({len(hits)} chunks)")
        assert r is not None, outcome  # the ingress answers, whatever the replica did
        assert status == 200 or status in (503, 504), r.text
        if status == 200:
            assert now != stored, "a write acknowledged with 200 was lost"
        else:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["code"] == status, err
        stored = now


# --------------------------------------------------------------------------- filters
def test_filters(stack, coll: str) -> None:
    docs = [
        {"id": "f-1", "text": "Torque wrench calibration every 90 days.", "tags": ["tools", "quality"],
         "source": "kb/tools_%/a.md", "created_at": "2024-01-10"},
        {"id": "f-2", "text": "Torque wrench storage in cabinet B.", "tags": ["tools"],
         "source": "kb/toolsX/b.md", "created_at": "2025-06-01T12:00:00Z"},
        {"id": "f-3", "text": "Torque limits for flange bolts.", "tags": ["flanges"],
         "source": 'kb/"quoted"/c.md', "created_at": 1767225600},  # 2026-01-01
    ]
    _post_docs(stack, docs, coll)

    def ids(flt: dict) -> set[str]:
        return {s["doc_id"] for s in _retrieve(stack, "torque wrench", collection=coll, top_k=20, filter=flt)}

    assert ids({"tags_any": ["tools"]}) == {"f-1", "f-2"}
    assert ids({"tags_all": ["tools", "quality"]}) == {"f-1"}
    assert ids({"created_after": "2025-01-01"}) == {"f-2", "f-3"}
    assert ids({"created_before": "2025-06-01T12:00:00+00:00"}) == {"f-1"}
    assert ids({"source_prefix": "kb/tools_%"}) == {"f-1"}  # % and _ are literal, not wildcards
    assert ids({"sources": ['kb/"quoted"/c.md']}) == {"f-3"}
    assert ids({"doc_ids": ["f-2", "f-3"], "tags_any": ["flanges"]}) == {"f-3"}
    # Injection attempts stay values: they match nothing rather than everything.
    for attack in ('x" or doc_id != "', 'x") or (doc_id != "', "\\\" or 1==1 or \"", "%"):
        assert ids({"sources": [attack]}) == set()
        assert ids({"tags_any": [attack]}) == set()
    assert ids({"source_prefix": '" or doc_id != "'}) == set()
    r = stack.client.post("/v1/retrieve", json={"question": "x", "collection": coll,
                                               "filter": {"doc_ids": ['a" or "1"=="1']}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("filter.doc_ids")
    r = stack.client.post("/v1/retrieve", json={"question": "x", "filter": {"expr": "doc_id != ''"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "filter.expr"
    r = stack.client.post("/v1/query", json={"question": "How often is the torque wrench calibrated?",
                                            "collection": coll, "filter": {"tags_any": ["quality"]},
                                            "max_tokens": 16})
    assert r.status_code == 200 and {s["doc_id"] for s in r.json()["sources"]} == {"f-1"}


# --------------------------------------------------------------------------- bulk ingestion
@pytest.fixture(scope="module")
def ingest_cli(stack, tmp_path_factory):
    """Runs ``ragserve ingest`` (Ray Data, its own local Ray) against the session's Milvus."""
    cfg_dir = tmp_path_factory.mktemp("bulkcfg")
    data = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    args = data["applications"][0]["args"]
    args["search"]["milvus"].update(uri=stack.milvus.uri, collection="it_bulk", timeout_s=10)
    args["ingest"].update(max_file_bytes=100_000, doc_batch_size=4, embed_actors=1)
    path = cfg_dir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(data))

    def run(*paths: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
        cmd = [sys.executable, "-m", "deployments.cli", "--config", str(path), "ingest", "-v", *map(str, paths)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if popen:
            return subprocess.Popen(cmd, env=env, cwd=ROOT, **popen)
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    yield run
    stack.client.delete("/v1/collections/it_bulk")


def test_bulk_ingest_formats_bad_files_and_rerun(stack, ingest_cli, tmp_path: Path, make_pdf) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "guide.md").write_text("# Obsidian kiln guide\n\nThe obsidian kiln fires at 1180 degrees.\n")
    (corpus / "page.html").write_text("<html><head><title>Marlow dock</title><script>var x=1;</script></head>"
                                      "<body><nav>Home | About</nav><p>Marlow dock opens at 05:40.</p></body></html>")
    (corpus / "sheet.pdf").write_bytes(make_pdf(["The Quorra valve QV-88 seals at 14 bar."], title="Quorra"))
    lines = [json.dumps({"id": "jl-1", "text": "Halvard badge renewals are due in March.", "tags": ["hr"]}),
             "{not json", json.dumps({"id": "jl-2", "title": "no text"}),
             json.dumps({"id": "jl-3", "text": "Tessaline paint cures in 48 hours."})]
    (corpus / "batch.jsonl").write_text("\n".join(lines) + "\n")
    (corpus / "empty.txt").write_text("")
    (corpus / "blob.txt").write_bytes(b"\x00\x01binary\x02")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage")
    (corpus / "huge.txt").write_text("word " * 30_000)  # 150 kB > max_file_bytes
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (corpus / "slides.pptx").write_bytes(b"PK\x03\x04")

    res = ingest_cli(corpus)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    reasons = {
        "corpus/empty.txt": "empty file", "corpus/blob.txt": "binary content",
        "corpus/broken.pdf": "corrupt PDF", "corpus/huge.txt": "the limit is 100000",
        "corpus/latin1.txt": "not UTF-8", "corpus/slides.pptx": "unsupported file type .pptx",
    }
    for source, reason in reasons.items():
        assert any(line.startswith("skipped") and source in line and reason in line for line in out.splitlines()), \
            (source, out)
    assert "line 2:" in out and "line 3:" in out  # bad .jsonl lines named, the good ones went in
    assert "5 added, 0 updated, 0 unchanged, 8 skipped" in out, out

    for question, expected in [("obsidian kiln temperature", "Obsidian kiln guide"), ("Marlow dock opening", "Marlow dock"),
                               ("Quorra valve QV-88", "Quorra"), ("Tessaline paint", "")]:
        top = _retrieve(stack, question, collection="it_bulk", top_k=1)[0]
        assert top["title"] == expected, (question, top)
    html = _retrieve(stack, "Marlow dock", collection="it_bulk", top_k=1)[0]["text"]
    assert "Home | About" not in html and "var x" not in html

    again = ingest_cli(corpus)
    assert again.returncode == 0 and "0 added, 0 updated, 5 unchanged, 8 skipped" in again.stdout, again.stdout


def _store(stack):
    from deployments.search.store import connect

    return connect(stack.cfg.search.milvus)


def test_killed_bulk_ingest_resumes_exactly(stack, ingest_cli, tmp_path: Path) -> None:
    """SIGKILL a bulk ingest midway, re-run it: the collection holds exactly the corpus's chunks."""
    from deployments.encoder.model import Embedder
    from deployments.ingest import pipeline

    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"doc{i:03d}.md").write_text(f"# Document {i}\n\n" + _text(f"m{i}", 12 + i % 5))
    client = _store(stack)
    before = {r["doc_id"] for r in client.query("it_bulk", filter="live == true", output_fields=["doc_id"], limit=16000)} \
        if client.has_collection("it_bulk") else set()

    def written() -> int:
        rows = client.query("it_bulk", filter="live == true", output_fields=["doc_id"], limit=16000)
        return len({r["doc_id"] for r in rows} - before)

    log = tmp_path / "killed-ingest.log"
    with log.open("wb") as out:
        proc = ingest_cli(corpus, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, n = time.monotonic() + 240, 0
        while time.monotonic() < deadline and proc.poll() is None and n < 4:
            time.sleep(0.2)
            n = written() if client.has_collection("it_bulk") else 0
        ended = proc.poll()
        # The CLI and the Ray it started, mid-run. A CLI that already failed by itself (the
        # assertion below shows its log) may have left Ray processes in its group, or nothing.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert ended is None and 4 <= n < 60, (
        f"could not interrupt midway: {n} of 60 documents written, exit status {ended}; log:\n"
        + log.read_text(errors="replace")[-3000:])

    res = ingest_cli(corpus)
    assert res.returncode == 0, res.stdout + res.stderr
    stack_cfg = stack.cfg
    embedder = Embedder(stack_cfg.encoder)
    expected: dict[str, str] = {}
    for path, source in pipeline.discover([corpus]):
        docs, bad = pipeline.parse_reports(path, source, stack_cfg.ingest)
        assert not bad
        for d in docs:
            p = pipeline.plan(d, embedder.count_tokens, stack_cfg.ingest, stack_cfg.preprocess)
            expected.update(dict.fromkeys(p.chunk_ids, p.version))
    rows = client.query("it_bulk", filter='source like "many/%"', output_fields=["id", "doc_hash", "live"],
                        limit=16000)
    assert {r["id"]: r["doc_hash"] for r in rows} == expected  # nothing lost, nothing extra, right versions
    assert len(rows) == len(expected) and all(r["live"] for r in rows)  # no duplicates, no tombstones
    summary = res.stdout.strip().splitlines()[-1]
    assert f"{60 - n} added" in summary or "unchanged" in summary, summary
