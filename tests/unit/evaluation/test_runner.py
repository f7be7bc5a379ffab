"""The eval runner's HTTP logic against an in-process fake server (httpx.MockTransport).

The fake answers with scripted rankings and answers, so the expected metrics are known by hand;
the real server is exercised by tests/integration/test_eval.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest

from deployments.evaluation import runner
from deployments.evaluation.dataset import EvalSet, Passage, Question
from deployments.evaluation.runner import EvalError, EvalOptions


def evalset(n_passages: int = 4) -> EvalSet:
    ps = [Passage(id=f"p{i}", text=f"passage {i} says fact{i}", lang="en") for i in range(n_passages)]
    qs = [Question(id="q1", question="one?", lang="en", relevant=["p1"], type="exact", answer="FACT1"),
          Question(id="q2", question="two?", lang="zh", relevant=["p2", "p3"], type="paraphrase",
                   answer="fact2")]
    return EvalSet(Path("set"), ps, qs)


# Ranked doc ids per (mode, question); p1 appears twice (two chunks of one document).
RANKINGS = {
    ("dense", "one?"): ["p0", "p1", "p1"],
    ("dense", "two?"): ["p0"],
    ("hybrid", "one?"): ["p1", "p0"],
    ("hybrid", "two?"): ["p3", "p0", "p2"],
}


class FakeServer:
    """Just enough of ragserve's API; records what it was sent."""

    def __init__(self, fail: dict[str, list[int]] | None = None, wrong_mode: bool = False,
                 rankings: dict[tuple[str, str], list[str]] | None = None) -> None:
        self.rankings = rankings or RANKINGS
        self.docs: dict[str, dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail or {}
        self.wrong_mode = wrong_mode

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.calls.append((path, body))
        if self.fail.get(path):
            status = self.fail[path].pop(0)
            return httpx.Response(status, headers={"retry-after": "0"},
                                  json={"error": {"message": f"scripted {status}", "type": "x", "param": None,
                                                  "code": status}})
        if path == "/v1/collections" and request.method == "POST":
            return httpx.Response(201, json={"name": body["name"], "created": True})
        if path == "/v1/collections":
            return httpx.Response(200, json={"collections": [{"name": "ev", "rows": len(self.docs)}]})
        if path == "/v1/documents":
            assert len(body["documents"]) <= 64
            res = [{"id": d["id"], "status": "unchanged" if d["id"] in self.docs else "added", "chunks": 1}
                   for d in body["documents"]]
            self.docs.update({d["id"]: d for d in body["documents"]})
            return httpx.Response(200, json={"collection": body["collection"], "results": res})
        if path == "/v1/retrieve":
            ids = self.rankings.get((body["mode"], body["question"]), [])
            mode = "hybrid" if self.wrong_mode else body["mode"]
            return httpx.Response(200, json={"sources": self._sources(ids), "mode": mode, "query_tokens": []})
        if path == "/v1/query":
            if body["question"] == "one?":  # cites [1] = p1 (relevant), states the fact in other case
                answer, cited, grounded = "It is fact1 [1].", [1], [1]
            else:                           # grounded in [2] = p0 (not relevant), wrong fact
                answer, cited, grounded = "No idea.", [], [2]
            ids = self.rankings[("hybrid", body["question"])]
            return httpx.Response(200, json={"id": "r", "answer": answer, "sources": self._sources(ids),
                                             "cited": cited, "grounded_in": grounded, "finish_reason": "stop",
                                             "usage": {}})
        return httpx.Response(404, json={"error": {"message": "no route", "type": "x", "param": None,
                                                   "code": 404}})

    @staticmethod
    def _sources(ids: list[str]) -> list[dict]:
        return [{"n": i, "id": f"{d}-c", "doc_id": d, "source": "", "title": "", "chunk_index": 0,
                 "score": 1.0, "text": "", "tags": []} for i, d in enumerate(ids, start=1)]


def run(fake: FakeServer, s: EvalSet | None = None, **kw) -> dict:
    opts = EvalOptions(collection="ev", **{"modes": ("dense", "hybrid"), **kw})
    return asyncio.run(runner.run("http://fake", s or evalset(), opts, transport=httpx.MockTransport(fake)))


def test_metrics_from_the_server_rankings() -> None:
    fake = FakeServer()
    report = run(fake)
    dense, hybrid = report["modes"]["dense"], report["modes"]["hybrid"]
    # dense: q1 relevant at rank 2 (p1's second chunk dropped), q2 nothing -> MRR (0.5 + 0) / 2
    assert dense["overall"]["mrr"] == pytest.approx(0.25)
    assert dense["overall"]["recall@1"] == 0 and dense["overall"]["recall@5"] == pytest.approx(0.5)
    assert dense["overall"]["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2)
    # hybrid: q1 at rank 1; q2's two relevant at ranks 1 and 3 -> recall@1 = (1 + 0.5) / 2
    assert hybrid["overall"]["recall@1"] == pytest.approx(0.75)
    q2_ndcg = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert hybrid["overall"]["ndcg@10"] == pytest.approx((1 + q2_ndcg) / 2)
    assert hybrid["by_lang"]["zh"] == pytest.approx({"n": 1, "recall@1": 0.5, "recall@5": 1, "recall@10": 1,
                                                     "mrr": 1, "ndcg@10": q2_ndcg, "above_twin": 1})
    assert list(hybrid["by_type"]) == ["exact", "paraphrase"]
    q1 = report["questions"][0]
    assert q1["ranked"] == {"dense": ["p0", "p1"], "hybrid": ["p1", "p0"]}
    assert q1["scores"]["hybrid"]["mrr"] == 1
    # every retrieve asked for the collection, the mode and top_k
    retrieves = [b for p, b in fake.calls if p == "/v1/retrieve"]
    assert len(retrieves) == 4
    assert all(b["collection"] == "ev" and b["top_k"] == 10 for b in retrieves)
    assert report["config"]["modes"] == ("dense", "hybrid") and report["config"]["questions"] == 2


def test_twin_rate_and_code_groups() -> None:
    """p0 and p1 share a source directory (twins), p2 and p3 another; q1 names a code."""
    ps = [Passage(id=f"p{i}", text=f"passage {i} says fact{i}", lang="en", source=f"kb/{i // 2}/{i}.md")
          for i in range(4)]
    qs = [Question(id="q1", question="one? HX-420", lang="en", relevant=["p1"], type="exact", answer="FACT1"),
          Question(id="q2", question="two?", lang="zh", relevant=["p2"], type="paraphrase", answer="fact2")]
    rankings = {("dense", "one? HX-420"): ["p0", "p1"], ("dense", "two?"): ["p0", "p2", "p3"],
                ("hybrid", "one? HX-420"): ["p1", "p0"], ("hybrid", "two?"): ["p3", "p2"]}
    report = run(FakeServer(rankings=rankings), EvalSet(Path("set"), ps, qs), generate=0, condense=())
    q1, q2 = report["questions"]
    assert q1["twins"] == ["p0"] and q2["twins"] == ["p3"]
    assert (q1["names_code"], q2["names_code"]) == (True, False)
    # dense: q1's twin p0 first -> 0; q2: p0 is no twin of p2, p2 before its twin p3 -> 1
    assert [q["scores"]["dense"]["above_twin"] for q in (q1, q2)] == [0, 1]
    # hybrid: q1 right first -> 1; q2's twin p3 before p2 -> 0
    assert [q["scores"]["hybrid"]["above_twin"] for q in (q1, q2)] == [1, 0]
    assert report["modes"]["hybrid"]["by_code"]["code"]["above_twin"] == 1
    assert report["modes"]["hybrid"]["by_code"]["no_code"]["recall@1"] == 0
    table = runner.format_table(report)
    assert "twin code" in table and "R@1 no_code" in table


def test_passages_are_loaded_in_batches_of_at_most_64() -> None:
    fake = FakeServer()
    report = run(fake, evalset(130), generate=0)
    posts = [b for p, b in fake.calls if p == "/v1/documents"]
    assert [len(b["documents"]) for b in posts] == [64, 64, 2]
    assert all(b["collection"] == "ev" for b in posts)
    assert report["load"]["added"] == 130 and report["load"]["rows"] == report["load"]["chunks"] == 130
    assert fake.calls[0] == ("/v1/collections", {"name": "ev"})
    again = run(fake, evalset(130), generate=0)  # nothing new: all unchanged
    assert again["load"]["unchanged"] == 130 and "added" not in again["load"]
    assert again["grounding"] is None


def test_grounding_checks() -> None:
    fake = FakeServer()
    g = run(fake, generate=5)["grounding"]
    assert g["n"] == 2
    one, two = g["questions"]
    assert one | {"answer": None} == {
        "id": "q1", "lang": "en", "type": "exact", "expected": "FACT1", "answer": None,
        "sources": ["p1", "p0"], "cited": [1], "grounded_in": [1], "retrieved_relevant": True,
        "cites_source": True, "grounded": True, "cited_relevant": True, "grounded_relevant": True,
        "answer_match": True}
    assert (two["cites_source"], two["grounded"], two["grounded_relevant"], two["answer_match"]) == \
        (False, True, False, False)
    assert g["rates"] == {"retrieved_relevant": 1.0, "cites_source": 0.5, "grounded": 1.0,
                          "cited_relevant": 0.5, "grounded_relevant": 0.5, "answer_match": 0.5}
    queries = [b for p, b in fake.calls if p == "/v1/query"]
    assert all(b["mode"] == "hybrid" and b["temperature"] == 0.0 and b["max_tokens"] == 64
               and b["collection"] == "ev" for b in queries)


def test_503_is_retried_and_a_400_names_the_route() -> None:
    fake = FakeServer(fail={"/v1/retrieve": [503, 504]})
    assert run(fake, generate=0)["modes"]["dense"]["overall"]["mrr"] == pytest.approx(0.25)
    with pytest.raises(EvalError, match=r"POST /v1/documents failed with 400: scripted 400"):
        run(FakeServer(fail={"/v1/documents": [400]}))
    with pytest.raises(EvalError, match="failed with 503"):  # retries exhausted
        run(FakeServer(fail={"/v1/query": [503] * 6}))  # 3 tries each


def test_a_server_that_ignores_the_mode_is_an_error() -> None:
    with pytest.raises(EvalError, match="asked for mode 'dense'"):
        run(FakeServer(wrong_mode=True))


def test_spread_covers_the_whole_list() -> None:
    assert runner.spread(list(range(10)), 3) == [0, 3, 6]
    assert runner.spread(list(range(4)), 9) == [0, 1, 2, 3]
    assert runner.spread(list(range(10)), 0) == []


def test_table_and_json(tmp_path: Path) -> None:
    report = run(FakeServer(), generate=2)
    table = runner.format_table(report).splitlines()
    assert table[0].split() == ["mode", "R@1", "R@5", "R@10", "MRR", "nDCG@10", "twin", "nDCG", "en", "nDCG", "zh",
                                "nDCG", "exact", "nDCG", "paraphrase"]
    assert table[1].split()[0] == "dense" and table[2].split()[0] == "hybrid"
    assert table[2].split()[1] == "0.750"
    assert "grounding on 2 questions" in table[-2] and "answer_match 50%" in table[-2]
    assert table[-1].startswith("passages: 4 added; seconds: load ")
    path = runner.write_json(report, tmp_path / "out" / "eval.json")
    assert json.loads(path.read_text())["modes"]["hybrid"]["overall"]["recall@1"] == 0.75


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="modes"):
        run(FakeServer(), modes=("dense", "fuzzy"))


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deployments.cli import parser
    from deployments.evaluation import command

    args = parser().parse_args(["eval", "--url", "http://x", "--modes", "dense,hybrid", "lexical", "--data",
                                str(tmp_path), "--generate", "0"])
    assert args.fn is command.cmd_eval and args.modes == [["dense", "hybrid"], ["lexical"]]
    assert args.collection == "eval" and args.concurrency == 4 and args.out == Path("eval.json")
    assert command.cmd_eval(args) == 2  # an empty --data directory: a dataset error, nothing sent
    assert "no passages.*.jsonl files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["eval", "--modes", "dense,fuzzy"])
