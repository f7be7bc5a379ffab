"""Nobody gets in where they don't belong: API keys, tenants and document ACLs on the live app.

A second ingress with API keys (app ``secure`` under ``/secure``, the ``keyed_ingress``
fixture) is deployed on the running stack, over the same stage deployments, so the real
encoder, Milvus and vLLM answer. Two tenants
(``acme`` and ``globex``) each hold a collection ``kb`` about the same turbine; acme's has a
document readable only by the ``eng`` group. Every passage carries a unique marker word, and
every response body (JSON, server-sent events, answers) is scanned for the markers of passages
the caller may not see: :data:`SEEN` counts them, and the last test asserts the count is 0 over
the whole run. Positive controls (the owner does retrieve each marker) show the scans would
catch a leak.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments import keys as keyfile
from deployments.ingress.auth import KeyEntry, KeysFile, Limits, hash_key, new_key

pytestmark = pytest.mark.integration
PREFIX = "/secure"
KB = "kb"
QUESTION = "What is the Kestrel turbine service code?"


@dataclass(frozen=True)
class Doc:
    tenant: str
    id: str
    marker: str
    acl: tuple[str, ...] | None = None
    topic: str = "service code"

    def body(self) -> dict:
        text = (f"The Kestrel turbine {self.topic} is {self.marker}. Technicians enter the Kestrel turbine "
                f"{self.topic} {self.marker} on the control panel before opening the nacelle.")
        doc = {"id": self.id, "title": "Kestrel turbine service code", "text": text}
        return doc | ({"acl": list(self.acl)} if self.acl is not None else {})


DOCS = (
    Doc("acme", "turbine-public", "zorblaxacme"),
    Doc("acme", "turbine-eng", "quintaracme", acl=("eng",), topic="emergency override code"),
    Doc("acme", "shared-id", "vellumacme"),
    Doc("globex", "turbine-public", "frobnitzglobex"),
    Doc("globex", "shared-id", "mirthglobex"),
)


@dataclass(frozen=True)
class Key:
    name: str
    tenant: str
    scopes: tuple[str, ...]
    groups: tuple[str, ...] = ()
    limits: Limits | None = None

    def may_see(self, doc: Doc) -> bool:
        return doc.tenant == self.tenant and (doc.acl is None or bool(set(doc.acl) & set(self.groups)))


KEYS = (
    Key("acme_admin", "acme", ("query", "write", "admin"), ("eng",)),
    Key("acme_reader", "acme", ("query",)),
    Key("acme_eng", "acme", ("query",), ("eng",)),
    Key("acme_writer", "acme", ("write",)),
    Key("globex_admin", "globex", ("query", "write", "admin")),
    Key("globex_limited", "globex", ("query",), limits=Limits(requests_per_s=0.2, burst=1)),
)
#: Foreign markers seen in any response, and the responses scanned (see the module docstring).
SEEN: Counter[str] = Counter()
SCANNED: Counter[str] = Counter()


@dataclass
class Secure:
    url: str
    tokens: dict[str, str]  # key name -> the key
    ids: dict[str, str]  # key name -> key id
    keys_file: Path
    client: httpx.Client

    def call(self, key: str | None, method: str, path: str, **kw) -> httpx.Response:
        headers = kw.pop("headers", {}) | ({"authorization": f"Bearer {self.tokens[key]}"} if key else {})
        r = self.client.request(method, PREFIX + path, headers=headers, **kw)
        if key:
            scan(key, r.text)
        return r

    def stream(self, key: str, path: str, body: dict) -> str:
        headers = {"authorization": f"Bearer {self.tokens[key]}"}
        with self.client.stream("POST", PREFIX + path, json=body, headers=headers) as r:
            assert r.status_code == 200, r.read()
            text = "".join(r.iter_text())
        scan(key, text)
        return text


def scan(key_name: str, text: str) -> None:
    """Count the markers of passages ``key_name`` may not see that occur in ``text``."""
    key = next(k for k in KEYS if k.name == key_name)
    SCANNED[key_name] += 1
    for doc in DOCS:
        if not key.may_see(doc) and doc.marker in text:
            SEEN[f"{key_name} saw {doc.tenant}/{doc.id}"] += 1


def write_keys(path: Path, entries: list[KeyEntry]) -> None:
    keyfile.write(path, KeysFile(keys=entries))


@pytest.fixture(scope="module")
def secure(stack, keyed_ingress) -> Iterator[Secure]:
    tokens, ids, entries = {}, {}, []
    for k in KEYS:
        token, key_id = new_key()
        tokens[k.name], ids[k.name] = token, key_id
        entries.append(KeyEntry(id=key_id, hash=hash_key(token), tenant=k.tenant, scopes=k.scopes, groups=k.groups,
                                limits=k.limits))
    path = keyed_ingress(PREFIX.strip("/"), entries)
    sec = Secure(stack.url, tokens, ids, path, httpx.Client(base_url=stack.url, timeout=180))
    try:
        for tenant_admin in ("acme_admin", "globex_admin"):
            r = sec.call(tenant_admin, "POST", "/v1/collections", json={"name": KB})
            assert r.status_code in (200, 201), r.text
        for tenant, writer in (("acme", "acme_writer"), ("globex", "globex_admin")):
            docs = [d.body() for d in DOCS if d.tenant == tenant]
            r = sec.call(writer, "POST", "/v1/documents", json={"collection": KB, "documents": docs})
            assert r.status_code == 200, r.text
        yield sec
    finally:
        for tenant_admin in ("acme_admin", "globex_admin"):
            sec.call(tenant_admin, "DELETE", f"/v1/collections/{KB}")
        sec.client.close()


def markers(text: str) -> set[str]:
    return {d.marker for d in DOCS if d.marker in text}


def retrieve(secure: Secure, key: str, **body) -> httpx.Response:
    return secure.call(key, "POST", "/v1/retrieve", json={"question": QUESTION, "collection": KB, "top_k": 10} | body)


# --------------------------------------------------------------------------- tenants and ACLs
def test_each_tenant_retrieves_its_own_passages_only(secure: Secure) -> None:
    """Positive controls: each owner finds exactly the markers it may see, with the same question."""
    expected = {k.name: {d.marker for d in DOCS if k.may_see(d)} for k in KEYS if "query" in k.scopes}
    for key, want in expected.items():
        if key == "globex_limited":
            continue
        r = retrieve(secure, key)
        assert r.status_code == 200, r.text
        assert markers(r.text) == want, (key, r.json()["sources"])


def test_document_acl_is_enforced_inside_retrieval(secure: Secure) -> None:
    """acme_reader lacks the eng group. Searched lexically for words only the restricted passage
    has, the eng member gets that passage first; the reader gets ``top_k`` passages it may see, a
    full page: the restricted one was never ranked (filtering after retrieval would return fewer).
    (No marker word in a question: responses echo the searched text, and every body is scanned.)"""
    question = "Kestrel turbine emergency override code"
    r = retrieve(secure, "acme_eng", question=question, top_k=1, mode="lexical")
    assert r.status_code == 200 and markers(r.text) == {"quintaracme"}, r.text
    r = retrieve(secure, "acme_reader", question=question, top_k=2, mode="lexical")
    assert r.status_code == 200 and len(r.json()["sources"]) == 2, r.text
    assert markers(r.text) == {"zorblaxacme", "vellumacme"}, r.text


@pytest.mark.parametrize("collection", ["acme__kb", "acme", "kb__acme", "ragserve", "it_sample"])
def test_another_tenants_collection_names_reach_nothing(secure: Secure, collection: str) -> None:
    r = retrieve(secure, "globex_admin", collection=collection)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code == 200:
        assert not markers(r.text) - {"frobnitzglobex", "mirthglobex"}


BREAKOUTS = [
    {"doc_ids": ["turbine-eng", "shared-id"]},
    {"sources": ['x" or acl != "', "x') or (1==1"]},
    {"source_prefix": '" || true || "'},
    {"tags_any": ['"] or array_contains(acl, "eng") or tags == ["']},
    {"tags_all": ["*"]},
]


@pytest.mark.parametrize("flt", BREAKOUTS, ids=lambda f: next(iter(f)))
def test_filter_values_cannot_widen_the_acl(secure: Secure, flt: dict) -> None:
    for key in ("acme_reader", "globex_admin"):
        r = retrieve(secure, key, filter=flt)
        assert r.status_code in (200, 400), r.text
        if "doc_ids" in flt:  # the reader's own shared-id only: not the eng one, not globex's
            assert r.status_code == 200 and markers(r.text) == {"acme": {"vellumacme"}, "globex": {"mirthglobex"}}[
                key.split("_")[0]], r.text
    r = retrieve(secure, "acme_reader", filter={"acl": ["eng"]})
    assert r.status_code == 400 and r.json()["error"]["param"], r.text  # no such filter field


def test_query_and_chat_streamed_and_not_see_no_foreign_passage(secure: Secure) -> None:
    small = {"max_tokens": 8}
    r = secure.call("acme_reader", "POST", "/v1/query", json={"question": QUESTION, "collection": KB} | small)
    assert r.status_code == 200, r.text
    assert "zorblaxacme" in json.dumps(r.json()["sources"])
    text = secure.stream("globex_admin", "/v1/query", {"question": QUESTION, "collection": KB, "stream": True} | small)
    assert "frobnitzglobex" in text
    chat = {"messages": [{"role": "user", "content": QUESTION}], "collection": KB} | small
    r = secure.call("acme_reader", "POST", "/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    text = secure.stream("globex_admin", "/v1/chat/completions", chat | {"stream": True})
    assert "frobnitzglobex" in text and "data: [DONE]" in text
    # A follow-up rewritten by the generator searches the caller's collection only, too.
    follow = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "It is a code."},
                           {"role": "user", "content": "Where is it entered?"}],
              "collection": KB, "condense": "rewrite"} | small
    assert secure.call("acme_reader", "POST", "/v1/chat/completions", json=follow).status_code == 200


# --------------------------------------------------------------------------- writes and admin
def test_documents_of_another_tenant_cannot_be_deleted_or_overwritten(secure: Secure) -> None:
    r = secure.call("globex_admin", "DELETE", "/v1/documents/turbine-eng", params={"collection": KB})
    assert r.status_code == 404, r.text
    # Same id, other tenant: the write lands in globex's own collection.
    doc = {"id": "turbine-public", "text": "The Kestrel turbine service code is frobnitzglobex, still."}
    r = secure.call("globex_admin", "POST", "/v1/documents", json={"collection": KB, "documents": [doc]})
    assert r.status_code == 200, r.text
    r = retrieve(secure, "acme_admin")
    assert {"zorblaxacme", "quintaracme", "vellumacme"} <= markers(r.text), r.text


def test_collections_are_listed_and_dropped_per_tenant(secure: Secure) -> None:
    r = secure.call("globex_admin", "POST", "/v1/collections", json={"name": "globexonly"})
    assert r.status_code in (200, 201), r.text
    try:
        acme = {c["name"] for c in secure.call("acme_reader", "GET", "/v1/collections").json()["collections"]}
        globex = {c["name"] for c in secure.call("globex_admin", "GET", "/v1/collections").json()["collections"]}
        assert KB in acme and "globexonly" not in acme and not any("__" in n for n in acme | globex)
        assert {KB, "globexonly"} <= globex
        r = secure.call("acme_admin", "DELETE", "/v1/collections/globexonly")
        assert r.status_code == 404, r.text
    finally:
        assert secure.call("globex_admin", "DELETE", "/v1/collections/globexonly").status_code == 200


# --------------------------------------------------------------------------- 401 / 403 / 429
def operations(secure: Secure) -> list[tuple[str, str]]:
    """Every keyed operation of the served document (health routes are open on purpose)."""
    doc = secure.client.get(f"{PREFIX}/openapi.json").json()
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if op.get("security"):
                ops.append((method.upper(), path.replace("{name}", "nothing").replace("{doc_id}", "nothing")
                            .replace("{model}", "nothing")))
    return ops


BAD_AUTH = {
    "none": None,
    "empty": b"",
    "scheme without key": b"Bearer",
    "wrong scheme": b"Basic dXNlcjpwYXNz",
    "huge": b"Bearer rsk_0123abcd_" + b"A" * 7000,
    "non-ascii": "Bearer rsk_0123abcd_ключ".encode(),
    "well-formed unknown": ("Bearer " + new_key()[0]).encode(),
    "lowercase scheme, padded": b"bearer    rsk_0123abcd_x",
}


def test_every_keyed_route_refuses_bad_credentials_in_the_one_shape(secure: Secure) -> None:
    ops = operations(secure)
    assert len(ops) >= 10, ops
    for method, path in ops:
        for name, value in BAD_AUTH.items():
            headers = {} if value is None else {"authorization": value}
            r = secure.client.request(method, PREFIX + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, name, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] == 401 and err["type"] == "authentication_error" and err["message"], err
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_scopes_are_enforced(secure: Secure) -> None:
    doc = {"collection": KB, "documents": [{"id": "x", "text": "x"}]}
    r = secure.call("acme_reader", "POST", "/v1/documents", json=doc)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
    assert secure.call("acme_writer", "POST", "/v1/collections", json={"name": "x"}).status_code == 403
    assert secure.call("acme_writer", "POST", "/v1/retrieve", json={"question": QUESTION}).status_code == 403
    assert secure.call("acme_reader", "DELETE", f"/v1/collections/{KB}").status_code == 403


def test_over_the_rate_a_key_gets_429_with_retry_after_and_others_do_not(secure: Secure) -> None:
    codes = [secure.call("globex_limited", "GET", "/v1/models") for _ in range(3)]
    assert codes[0].status_code == 200, codes[0].text
    limited = [r for r in codes[1:] if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert int(limited[0].headers["retry-after"]) >= 1 and limited[0].json()["error"]["type"] == "rate_limit_error"
    assert secure.call("globex_admin", "GET", "/v1/models").status_code == 200


def test_a_flooding_key_gets_429s_and_the_benchmark_records_the_other_keys_latency(secure: Secure) -> None:
    """The isolation benchmark against this ingress: the limited key sends /v1/retrieve at 20/s,
    100 times its limit of 0.2/s, from its own process; acme_reader asks one at a time (25 per
    phase) in alternating quiet and noisy phases (three of each noisy).
    Asserted: the flood is refused with 429 + Retry-After and the other key is never refused.
    The latencies are written to reports/isolation-integration.json, not asserted (this machine
    is noisy: the target, p50 within 20% of unloaded, is read from the numbers)."""
    import asyncio

    from deployments.bench import isolation

    report = asyncio.run(isolation.run(f"{secure.url}{PREFIX}", secure.tokens["acme_reader"],
                                       secure.tokens["globex_limited"], n=25, connections=8, rate=20.0,
                                       collection=KB, rounds=3))
    got = report["noisy_key"]
    assert got.get("429", 0) > 10 * got.get("200", 0) and "429 without Retry-After" not in got, got
    out = Path(__file__).resolve().parents[2] / "reports" / "isolation-integration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({k: report["victim"][k] for k in ("quiet", "noisy", "p50_ratio_noisy_over_quiet")}))


def test_openai_client_sends_the_key(secure: Secure) -> None:
    openai = pytest.importorskip("openai")
    base = f"{secure.url}{PREFIX}/v1"
    client = openai.OpenAI(base_url=base, api_key=secure.tokens["acme_reader"], max_retries=0)
    assert [m.id for m in client.models.list().data]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=base, api_key=secure.tokens["acme_writer"], max_retries=0).models.list()


def test_keys_are_added_and_revoked_without_a_restart(secure: Secure) -> None:
    entries = list(keyfile.read(secure.keys_file).keys)
    token, key_id = new_key()
    write_keys(secure.keys_file, [*entries, KeyEntry(id=key_id, hash=hash_key(token), tenant="acme")])

    def status(tok: str) -> int:
        return secure.client.get(f"{PREFIX}/v1/models", headers={"authorization": f"Bearer {tok}"}).status_code

    assert wait_for(lambda: status(token) == 200), "a new key was not picked up"
    write_keys(secure.keys_file, [*entries, KeyEntry(id=key_id, hash=hash_key(token), tenant="acme", disabled=True)])
    assert wait_for(lambda: status(token) == 401), "a revoked key still works"
    assert status(secure.tokens["acme_reader"]) == 200


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    """The keys file is re-read within ``reload_interval_s`` (0.5 s here) of a change."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


# --------------------------------------------------------------------------- audit and the count
def test_writes_and_admin_calls_leave_audit_lines(secure: Secure) -> None:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = [line for f in logs.glob("replica_secure_secure_ingress_*.log")
             for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if "audit" in line]
    text = "\n".join(lines)
    for key in ("acme_admin", "acme_writer", "globex_admin"):
        assert secure.ids[key] in text, (key, lines[-5:])
    assert "/v1/documents/turbine-eng" in text and "404" in text  # the refused cross-tenant delete


def test_no_foreign_passage_was_seen_in_the_whole_run() -> None:
    """Runs last in this module: every response above was scanned."""
    assert sum(SCANNED.values()) >= 40, SCANNED
    assert not SEEN, SEEN
