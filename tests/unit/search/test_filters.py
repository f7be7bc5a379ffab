"""Unit tests of the Milvus expressions ragserve writes: ``deployments.search.filters`` and the
filter-carrying writes of ``ChunkStore``.

Covers: ``compile_filter`` for every ``Filter`` field alone and all together (``live == true``
always first; ``None`` and an empty filter give it alone); injection attempts in every string
field, checked by reading the expression back with a tokenizer that follows Milvus's string
literal grammar (escapes ``\\" \\' \\\\ \\n \\r \\t`` only, no raw line breaks) and asserting the
conditions are exactly the expected ones with each value intact, then cross-checked with
milvus-lite's own expression parser; ``like_prefix`` escaping and its LIKE semantics;
``Filter`` validation (extra fields, wrong types, empty lists, bad document ids, ISO 8601 and
epoch times, garbage times) in Python and JSON validation; ``ChunkStore.replace_documents``
against a fake ``MilvusClient`` that records calls (one upsert of new rows plus tombstones,
then a delete of the documents' ``live == false`` rows, then a flush).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.config import SearchConfig
from deployments.protocol.types import Filter, epoch_seconds
from deployments.search.filters import LIVE, compile_filter, like_prefix, quote
from deployments.search.store import ChunkStore
from deployments.search.versions import VERSIONS_COLLECTION

Token = tuple[str, Any]  # ("id" | "str" | "int" | "op", value)
Cond = tuple[Token, ...]

# Milvus's grammar (and milvus-lite's tokenizer) accept exactly these escapes in a string.
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|-?\d+|==|!=|>=|<=|[<>\[\](),]")


def read_literal(expr: str, start: int = 0) -> tuple[str, int]:
    """Read the double-quoted Milvus string literal at ``expr[start]``; return (value, end).

    Fails on an unterminated literal, an unknown escape or a raw line break, as Milvus does.
    """
    assert expr[start] == '"', expr[start:]
    out, i = [], start + 1
    while i < len(expr):
        ch = expr[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch in "\r\n":
            raise AssertionError(f"raw line break inside a string literal (Milvus rejects it): {expr!r}")
        if ch == "\\":
            assert i + 1 < len(expr) and expr[i + 1] in _ESCAPES, f"bad escape at {i} in {expr!r}"
            out.append(_ESCAPES[expr[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    raise AssertionError(f"unterminated literal: {expr!r}")


def tokens(expr: str) -> list[Token]:
    """Tokens of a filter expression: identifiers, ints, operators/punctuation, decoded strings."""
    out: list[Token] = []
    i = 0
    while i < len(expr):
        if expr[i] == " ":
            i += 1
        elif expr[i] == '"':
            value, i = read_literal(expr, i)
            out.append(("str", value))
        else:
            m = _WORD.match(expr, i)
            assert m, f"unexpected character {expr[i]!r} at {i} in {expr!r}"
            w = m.group()
            out.append(
                ("int", int(w))
                if w.lstrip("-").isdigit()
                else ("id", w)
                if w[0].isalpha() or w[0] == "_"
                else ("op", w)
            )
            i = m.end()
    return out


def conditions(expr: str) -> list[Cond]:
    """The expression's top-level ``and``-ed conditions (a string value never splits one)."""
    out: list[list[Token]] = [[]]
    for t in tokens(expr):
        if t == ("id", "and"):
            out.append([])
        else:
            out[-1].append(t)
    assert all(out), f"empty condition in {expr!r}"
    return [tuple(c) for c in out]


def _list(values: tuple[str, ...] | list[str]) -> list[Token]:
    out: list[Token] = [("op", "[")]
    for n, v in enumerate(values):
        out += [("op", ",")] if n else []
        out.append(("str", v))
    return [*out, ("op", "]")]


def c_in(field: str, values: list[str]) -> Cond:
    return (("id", field), ("id", "in"), *_list(values))


def c_like(field: str, pattern: str) -> Cond:
    return ("id", field), ("id", "like"), ("str", pattern)


def c_array(fn: str, values: list[str]) -> Cond:
    return ("id", fn), ("op", "("), ("id", "tags"), ("op", ","), *_list(values), ("op", ")")


def c_cmp(field: str, op: str, value: int | bool) -> Cond:
    right: Token = ("id", str(value).lower()) if isinstance(value, bool) else ("int", value)
    return ("id", field), ("op", op), right


LIVE_COND = c_cmp("live", "==", True)


# --------------------------------------------------------------------------- the reader itself
def test_reader_rejects_what_milvus_rejects() -> None:
    assert read_literal('"a\\"b\\\\c" rest') == ('a"b\\c', 9)
    for bad in ['"open', '"a\\%"', '"a\nb"', '"ends\\"']:
        with pytest.raises(AssertionError):
            read_literal(bad)
    assert conditions('live == true and source in ["x and y", "z"]') == [
        LIVE_COND,
        c_in("source", ["x and y", "z"]),
    ]


# --------------------------------------------------------------------------- compile_filter
def test_no_filter_is_live_rows_only() -> None:
    assert compile_filter(None) == LIVE == "live == true"
    assert compile_filter(Filter()) == LIVE
    assert conditions(compile_filter(None)) == [LIVE_COND]


KNOWN_CREATION = c_cmp("created_at", ">", 0)  # a created_at bound also excludes unknown (0) creation times


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"doc_ids": ["a1", "B.2:x-y"]}, [c_in("doc_id", ["a1", "B.2:x-y"])]),
        ({"sources": ["docs/a.md"]}, [c_in("source", ["docs/a.md"])]),
        ({"source_prefix": "docs/"}, [c_like("source", "docs/%")]),
        ({"tags_any": ["hr", "policy"]}, [c_array("ARRAY_CONTAINS_ANY", ["hr", "policy"])]),
        ({"tags_all": ["hr"]}, [c_array("ARRAY_CONTAINS_ALL", ["hr"])]),
        ({"created_after": 1_700_000_000}, [KNOWN_CREATION, c_cmp("created_at", ">=", 1_700_000_000)]),
        ({"created_before": "2024-01-02"}, [KNOWN_CREATION, c_cmp("created_at", "<", 1_704_153_600)]),
        ({"updated_after": "2024-01-02T00:00:00Z"}, [c_cmp("updated_at", ">=", 1_704_153_600)]),
        ({"updated_before": -5}, [c_cmp("updated_at", "<", -5)]),
    ],
    ids=[
        "doc_ids",
        "sources",
        "source_prefix",
        "tags_any",
        "tags_all",
        "created_after",
        "created_before",
        "updated_after",
        "updated_before",
    ],
)
def test_each_field_alone(body: dict[str, Any], expected: list[Cond]) -> None:
    assert conditions(compile_filter(Filter.model_validate(body))) == [LIVE_COND, *expected]


def test_every_field_together_live_first() -> None:
    f = Filter.model_validate(
        {
            "doc_ids": ["d1"],
            "sources": ["s1", "s2"],
            "source_prefix": "p/",
            "tags_any": ["a"],
            "tags_all": ["b", "c"],
            "created_after": 10,
            "created_before": 20,
            "updated_after": 30,
            "updated_before": 40,
        }
    )
    conds = conditions(compile_filter(f))
    assert conds[0] == LIVE_COND
    assert sorted(conds[1:]) == sorted(
        [
            c_in("doc_id", ["d1"]),
            c_in("source", ["s1", "s2"]),
            c_like("source", "p/%"),
            c_array("ARRAY_CONTAINS_ANY", ["a"]),
            c_array("ARRAY_CONTAINS_ALL", ["b", "c"]),
            KNOWN_CREATION,
            c_cmp("created_at", ">=", 10),
            c_cmp("created_at", "<", 20),
            c_cmp("updated_at", ">=", 30),
            c_cmp("updated_at", "<", 40),
        ]
    )


HOSTILE = [
    '"',
    "\\",
    '" or doc_id != "',
    'x\\" or doc_id != \\"',
    "' or 1 == 1 or '",
    "%",
    "_",
    "50%_off",
    "]",
    ")",
    "a], [b",
    "x) or (live == false",
    " and live == false",
    "tab\there",
    "\\n is two chars",
    "翠岚坪茶园.md",
    "line\nbreak",
    "carriage\rreturn",
]


def _hostile_cases(value: str) -> list[tuple[dict[str, Any], Cond]]:
    return [
        ({"sources": [value, "plain"]}, c_in("source", [value, "plain"])),
        (
            {"source_prefix": value},
            c_like("source", value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
        ),
        ({"tags_any": [value]}, c_array("ARRAY_CONTAINS_ANY", [value])),
        ({"tags_all": ["plain", value]}, c_array("ARRAY_CONTAINS_ALL", ["plain", value])),
    ]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_values(value: str) -> None:
    for body, expected in _hostile_cases(value):
        expr = compile_filter(Filter.model_validate(body))
        assert conditions(expr) == [LIVE_COND, expected], (body, expr)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_parse_in_milvus_lite(value: str) -> None:
    """The same expressions through milvus-lite's real parser (the embedded default store)."""
    ml = pytest.importorskip("milvus_lite.search.filter")
    for body, expected in _hostile_cases(value):
        ast = ml.parse_expr(compile_filter(Filter.model_validate(body)))
        live, cond = ast.operands  # exactly two conditions
        assert (live.left.name, live.op, live.right.value) == ("live", "==", True)
        if body.get("source_prefix"):
            got = (cond.value.name, cond.pattern.value)
            assert got == ("source", expected[-1][1])
        elif body.get("sources"):
            assert (cond.field.name, cond.negate) == ("source", False)
            assert [e.value for e in cond.values.elements] == body["sources"]
        else:
            mode = "any" if "tags_any" in body else "all"
            assert (cond.value.name, cond.mode) == ("tags", mode)
            assert [e.value for e in cond.values.elements] == body[f"tags_{mode}"]


@pytest.mark.parametrize("value", ["", "plain.md", '"', "\\", '\\"', 'x" or doc_id != "', "翠岚"])
def test_quote_round_trips(value: str) -> None:
    assert read_literal(quote(value)) == (value, len(quote(value)))


# --------------------------------------------------------------------------- like_prefix
def _like_matches(pattern: str, s: str) -> bool:
    """SQL LIKE with backslash escapes (Milvus's semantics): % any run, _ one character."""
    rx, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            rx += re.escape(pattern[i + 1])
            i += 2
            continue
        rx += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.fullmatch(rx, s, re.DOTALL) is not None


@pytest.mark.parametrize(
    ("prefix", "pattern"),
    [("docs/", "docs/%"), ("50%", "50\\%%"), ("a_b", "a\\_b%"), ("a\\b", "a\\\\b%"), ("%_\\", "\\%\\_\\\\%")],
)
def test_like_prefix_escapes_wildcards(prefix: str, pattern: str) -> None:
    assert read_literal(like_prefix(prefix)) == (pattern, len(like_prefix(prefix)))


@pytest.mark.parametrize("prefix", ["docs/", "50%_off/", "a_b", "x\\y%", "_%"])
def test_like_prefix_matches_exactly_the_prefix(prefix: str) -> None:
    pattern, _ = read_literal(like_prefix(prefix))
    assert _like_matches(pattern, prefix)
    assert _like_matches(pattern, prefix + "rest/of.md")
    assert not _like_matches(pattern, "z" + prefix)
    assert not _like_matches(pattern, prefix[:-1])
    decoy = prefix.replace("%", "X").replace("_", "X")  # a wildcard must not stand for another character
    if decoy != prefix:
        assert not _like_matches(pattern, decoy + "tail")


# --------------------------------------------------------------------------- Filter validation
def _validate(body: dict[str, Any], how: str) -> Filter:
    return Filter.model_validate_json(json.dumps(body)) if how == "json" else Filter.model_validate(body)


@pytest.fixture(params=["python", "json"])
def how(request: pytest.FixtureRequest) -> str:
    return request.param


def _rejected(body: dict[str, Any], how: str) -> tuple:
    with pytest.raises(ValidationError) as exc:
        _validate(body, how)
    return exc.value.errors()[0]["loc"]


def test_lists_become_tuples_and_filter_is_frozen(how: str) -> None:
    f = _validate({"doc_ids": ["a"], "sources": ["s"], "tags_any": ["t"], "tags_all": ["u"]}, how)
    assert (f.doc_ids, f.sources, f.tags_any, f.tags_all) == (("a",), ("s",), ("t",), ("u",))
    assert hash(f) == hash(
        _validate({"doc_ids": ["a"], "sources": ["s"], "tags_any": ["t"], "tags_all": ["u"]}, how)
    )
    with pytest.raises(ValidationError):
        f.doc_ids = ("b",)  # type: ignore[misc]


@pytest.mark.parametrize("field", ["expr", "filter", "doc_id", "tags"])
def test_unknown_fields_rejected(field: str, how: str) -> None:
    assert _rejected({field: 'doc_id != ""'}, how) == (field,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("doc_ids", "abc"),
        ("doc_ids", [1]),
        ("sources", "docs/a.md"),
        ("sources", [None]),
        ("source_prefix", 5),
        ("source_prefix", ["docs/"]),
        ("tags_any", "hr"),
        ("tags_all", [True]),
        ("created_after", 1.5),
        ("created_after", True),
        ("updated_before", ["2024-01-01"]),
        ("created_before", {"t": 1}),
    ],
)
def test_wrong_types_rejected(field: str, value: Any, how: str) -> None:
    assert _rejected({field: value}, how)[0] == field


@pytest.mark.parametrize("field", ["doc_ids", "sources", "tags_any", "tags_all"])
def test_empty_lists_rejected(field: str, how: str) -> None:
    assert _rejected({field: []}, how) == (field,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_prefix", ""),
        ("sources", [""]),
        ("tags_any", [""]),
        ("tags_all", ["x" * 65]),
        ("tags_any", [f"t{i}" for i in range(33)]),
        ("doc_ids", [f"d{i}" for i in range(257)]),
        ("source_prefix", "x" * 2049),
    ],
)
def test_sizes_rejected(field: str, value: Any, how: str) -> None:
    assert _rejected({field: value}, how)[0] == field


def test_size_edges_accepted() -> None:
    f = Filter(
        tags_any=tuple(f"t{i}" for i in range(32)),
        doc_ids=tuple(f"d{i}" for i in range(256)),
        tags_all=("x" * 64,),
        source_prefix="x" * 2048,
    )
    assert len(f.tags_any or ()) == 32 and len(f.doc_ids or ()) == 256


@pytest.mark.parametrize(
    "doc_id",
    ["", "a b", "-lead", ".lead", 'a"b', "a\\b", "a/b", "a\n", "a" * 129, "ü", 'x" or doc_id != "'],
)
def test_bad_doc_ids_rejected(doc_id: str, how: str) -> None:
    assert _rejected({"doc_ids": ["ok", doc_id]}, how)[:2] == ("doc_ids", 1)


def test_good_doc_ids_accepted() -> None:
    ids = ("a", "Z9", "a" * 128, "doc-1.v2:part_3", "0abc")
    assert Filter(doc_ids=ids).doc_ids == ids


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("2024-01-02", 1_704_153_600),
        ("2024-01-02T03:04:05Z", 1_704_164_645),
        ("2024-01-02T03:04:05+02:00", 1_704_164_645 - 7200),
        ("2024-01-02T03:04:05-05:30", 1_704_164_645 + 5 * 3600 + 1800),
        ("2024-01-02T03:04:05", 1_704_164_645),  # no zone: UTC
        ("2024-01-02T03:04:05.900Z", 1_704_164_645),  # fractions dropped
        (1_704_153_600, 1_704_153_600),
        (0, 0),
        (-86_400, -86_400),
    ],
)
def test_times(value: int | str, epoch: int, how: str) -> None:
    for field in ("created_after", "created_before", "updated_after", "updated_before"):
        assert getattr(_validate({field: value}, how), field) == epoch
    assert epoch_seconds(value) == epoch


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        " 2024-01-02",
        "1700000000",
        "2024-13-01",
        "2024-02-30",
        "2024-01-02T25:00",
        "2024-01-02 or 1 == 1",
        "0000-01-01",
    ],
)
def test_garbage_times_rejected(value: str, how: str) -> None:
    for field in ("created_after", "updated_before"):
        assert _rejected({field: value}, how) == (field,)
    with pytest.raises(ValueError, match="ISO 8601"):
        epoch_seconds(value)


def test_epoch_seconds_none_is_zero() -> None:
    assert epoch_seconds(None) == 0


# --------------------------------------------------------------------------- ChunkStore writes
class FakeClient:
    """Records every MilvusClient call ChunkStore makes, in order; answers queries from ``rows``."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict[str, Any]]] = []
        self.rows = rows or []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return self.rows if name == "query" else None

        return call


#: Every field of a chunk row (the collection schema less the BM25 output ``sparse``).
#: Every field a written row carries: Milvus rejects an upsert whose row misses one (a tombstone
#: without ``acl`` once failed every document replace).
ROW_FIELDS = {
    "id",
    "doc_id",
    "source",
    "title",
    "chunk_index",
    "content_hash",
    "doc_hash",
    "tags",
    "created_at",
    "updated_at",
    "live",
    "text",
    "lexical",
    "dense",
    "acl",
}


def _store(client: FakeClient, dim: int = 3) -> ChunkStore:
    return ChunkStore(client, SearchConfig(), dim=dim, name="chunks")


def _row(cid: str, doc_id: str) -> dict[str, Any]:
    return {"id": cid, "doc_id": doc_id, "live": True, "text": f"text of {cid}"}


ENSURE = ("has_collection", "create_collection", "load_collection")


def _token_calls(client: FakeClient) -> list[tuple[str, tuple, dict[str, Any]]]:
    """The client's calls less the versions collection's set-up, after checking that it came
    first and once (a store ensures it before its first token call: a failed call there would
    make pymilvus log an ERROR on every fresh Milvus)."""
    setup = [i for i, c in enumerate(client.calls) if c[0] in ENSURE and c[1][:1] == (VERSIONS_COLLECTION,)]
    first_token = next(i for i, c in enumerate(client.calls) if c[1][:1] == (VERSIONS_COLLECTION,))
    assert setup and setup[0] == first_token and [client.calls[i][0] for i in setup][-1] == "load_collection"
    return [c for i, c in enumerate(client.calls) if i not in setup]


def _chunk_calls(client: FakeClient) -> list[tuple[str, tuple, dict[str, Any]]]:
    """The calls on the chunk collection, after checking the version-token calls around them:
    the token forgotten first, a new one written last (``deployments/search/versions.py``)."""
    (forget, *calls, bump) = _token_calls(client)
    assert forget[0] == "delete" and forget[1] == (VERSIONS_COLLECTION,) and forget[2]["ids"] == ["chunks"]
    assert bump[0] == "upsert" and bump[1][0] == VERSIONS_COLLECTION
    (row,) = bump[1][1]
    assert row["name"] == "chunks" and len(row["token"]) == 32
    return calls


def test_replace_documents_is_one_upsert_then_delete_of_tombstones_then_flush() -> None:
    client = FakeClient()
    new_a = [_row("a0", "A"), _row("a1", "A")]
    new_b = [_row("b0", "B")]
    _store(client).replace_documents(
        [("A", new_a, {"a0": "v", "a1": "v", "a3": "v", "a2": "v"}), ("B", new_b, ["b0"])]
    )
    calls = _chunk_calls(client)
    assert [c[0] for c in calls] == ["upsert", "delete", "flush"]
    (_, (name, batch), kw) = calls[0]
    assert name == "chunks" and kw == {"timeout": 5.0}
    assert batch[:2] == new_a
    assert [r["id"] for r in batch[2:4]] == ["a2", "a3"]  # tombstones of the chunks A no longer has
    assert batch[4:] == new_b  # B kept all its ids: no tombstone
    for t in batch[2:4]:
        assert t["doc_id"] == "A" and t["live"] is False and t["dense"] == [0.0, 0.0, 0.0]
        assert set(t) == ROW_FIELDS and t["chunk_index"] == -1 and t["updated_at"] > 0
    (_, (name,), kw) = calls[1]
    assert name == "chunks" and kw["timeout"] == 5.0
    assert conditions(kw["filter"]) == [c_in("doc_id", ["A", "B"]), c_cmp("live", "==", False)]
    assert calls[2][1] == ("chunks",)


def test_replace_document_without_old_chunks_writes_no_tombstone() -> None:
    client = FakeClient()
    _store(client).replace_document("A", [_row("a0", "A")], [])
    calls = _chunk_calls(client)
    assert [r["id"] for r in calls[0][1][1]] == ["a0"]
    assert conditions(calls[1][2]["filter"]) == [c_in("doc_id", ["A"]), c_cmp("live", "==", False)]


def test_deleting_a_document_replaces_the_version_token_and_a_drop_forgets_it() -> None:
    client = FakeClient(rows=[{"id": "a0"}])
    _store(client).delete_document("A")
    ops = [(c[0], c[1][:1]) for c in _token_calls(client)]
    assert ops[0] == ("query", ("chunks",))
    assert ops[1:4] == [("delete", (VERSIONS_COLLECTION,)), ("delete", ("chunks",)), ("flush", ("chunks",))]
    assert ops[4] == ("upsert", (VERSIONS_COLLECTION,)) and len(ops) == 5

    class Existing(FakeClient):
        def has_collection(self, name: str, **kwargs: Any) -> bool:
            self.calls.append(("has_collection", (name,), kwargs))
            return True

    client = Existing()
    assert _store(client).drop()
    assert [(c[0], c[1][:1]) for c in _token_calls(client)] == [
        ("has_collection", ("chunks",)), ("delete", (VERSIONS_COLLECTION,)), ("drop_collection", ("chunks",))]


def test_replace_nothing_makes_no_call() -> None:
    client = FakeClient()
    _store(client).replace_documents([])
    assert client.calls == []


def test_document_state_and_purge_expressions() -> None:
    client = FakeClient(rows=[{"id": "c0", "doc_id": 'd"1', "doc_hash": "v1"},
                              {"id": "c1", "doc_id": 'd"1', "doc_hash": "v1"}])
    store = _store(client)
    assert store.document_state('d"1') == {"c0": "v1", "c1": "v1"}
    assert conditions(client.calls[0][2]["filter"]) == [c_in("doc_id", ['d"1']), LIVE_COND]
    store.purge_tombstones()
    assert client.calls[1][0] == "delete" and conditions(client.calls[1][2]["filter"]) == [
        c_cmp("live", "==", False)
    ]


@pytest.mark.parametrize(("index", "limit", "params"), [
    ("FLAT", 10, {}),
    ("HNSW", 10, {"ef": 64}),
    ("HNSW", 100, {"ef": 100}),  # Milvus rejects ef below the limit
    ("IVF_FLAT", 10, {"nprobe": 16}),
])
def test_dense_search_params_follow_the_index(index: str, limit: int, params: dict) -> None:
    from deployments.config import SearchConfig
    from deployments.search.store import ChunkStore

    store = ChunkStore(client=None, cfg=SearchConfig(index_type=index), dim=4)
    assert store._dense_params(limit) == {"metric_type": "IP", "params": params}


def test_lexical_scores_are_positive_whatever_the_server_reports() -> None:
    """milvus-lite returns BM25 scores negated (as distances, best first); Milvus returns them as
    they are. Either way a hit's score is the BM25 score: higher is better."""
    from deployments.config import SearchConfig
    from deployments.search.store import ChunkStore

    entity = {"doc_id": "d", "source": "s", "title": "", "chunk_index": 0, "text": "t", "tags": [],
              "created_at": 0, "updated_at": 0, "doc_hash": "v"}

    class Client:
        def __init__(self, distances: list[float]) -> None:
            self.distances = distances

        def search(self, *args, **kwargs):
            return [[{"id": f"c{i}", "distance": d, "entity": entity} for i, d in enumerate(self.distances)]]

    for reported in ([-2.5, -1.0], [2.5, 1.0]):
        store = ChunkStore(Client(reported), SearchConfig(), dim=4)
        assert [h.score for h in store.search([0.0] * 4, "pump", 2, "lexical")] == [2.5, 1.0]
    store = ChunkStore(Client([0.9, -0.2]), SearchConfig(), dim=4)
    assert [h.score for h in store.search([0.0] * 4, "pump", 2, "dense")] == [0.9, -0.2]  # IP may be < 0


# --------------------------------------------------------------------------- the mandatory ACL clause
def c_acl(groups: list[str]) -> Cond:
    return ("id", "ARRAY_CONTAINS_ANY"), ("op", "("), ("id", "acl"), ("op", ","), *_list(groups), ("op", ")")


@pytest.mark.parametrize("value", HOSTILE)
def test_the_acl_clause_is_its_own_conjunct_whatever_the_filter_says(value: str) -> None:
    """A key's groups are ANDed with everything else, so no request value can widen them."""
    for body, expected in _hostile_cases(value):
        expr = compile_filter(Filter.model_validate(body), acl=("*", "hr"))
        assert conditions(expr) == [LIVE_COND, c_acl(["*", "hr"]), expected], (body, expr)
    assert conditions(compile_filter(None, acl=("*",))) == [LIVE_COND, c_acl(["*"])]
    assert conditions(compile_filter(None, acl=())) == [LIVE_COND, c_acl([""])]  # no groups: no row
    assert conditions(compile_filter(None)) == [LIVE_COND]  # a server without keys filters nothing


@pytest.mark.parametrize("value", HOSTILE)
def test_the_acl_clause_parses_in_milvus_lite(value: str) -> None:
    ml = pytest.importorskip("milvus_lite.search.filter")
    ast = ml.parse_expr(compile_filter(Filter.model_validate({"tags_any": [value]}), acl=("*", value[:60] or "g")))
    live, acl, tags = ast.operands
    assert (acl.value.name, acl.mode) == ("acl", "any")
    assert [e.value for e in acl.values.elements] == ["*", value[:60] or "g"]
    assert (tags.value.name, [e.value for e in tags.values.elements]) == ("tags", [value])
