"""Loading and validating the evaluation set: every problem named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.evaluation import dataset
from deployments.evaluation.dataset import DatasetError


def passage(pid: str, text: str, lang: str = "en") -> dict:
    return {"id": pid, "title": f"T {pid}", "text": text, "lang": lang, "tags": ["pumps"],
            "source": f"kb/{lang}/{pid}.md", "created_at": "2025-03-14"}


def question(qid: str, relevant: list[str], answer: str, lang: str = "en", type_: str = "exact") -> dict:
    return {"id": qid, "question": f"q {qid}?", "lang": lang, "relevant": relevant, "type": type_,
            "answer": answer}


def write(path: Path, rows: list[dict | str]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    write(tmp_path / "passages.en.jsonl", [passage("en-p1", "The Verdant Loop pump holds 6.5  bar."),
                                           passage("en-p2", "Nimbus Vault error E-4471 means a full disk.")])
    write(tmp_path / "passages.zh.jsonl", [passage("zh-p1", "翠岚坪茶园位于海拔1200米。", "zh")])
    write(tmp_path / "questions.en.jsonl", [
        question("en-q1", ["en-p1"], "6.5 BAR"), "",
        question("en-q2", ["en-p2", "en-p1"], "full disk", type_="paraphrase")])
    write(tmp_path / "questions.zh.jsonl", [question("zh-q1", ["zh-p1"], "1200米", "zh", "mixed")])
    return tmp_path


def test_loads_all_files_in_name_order(good: Path) -> None:
    s = dataset.load(good)
    assert [p.id for p in s.passages] == ["en-p1", "en-p2", "zh-p1"]
    assert [q.id for q in s.questions] == ["en-q1", "en-q2", "zh-q1"]
    assert s.passages[0].document() == {"id": "en-p1", "text": "The Verdant Loop pump holds 6.5  bar.",
                                        "title": "T en-p1", "source": "kb/en/en-p1.md", "tags": ["pumps"],
                                        "created_at": "2025-03-14"}


def test_every_problem_is_reported_with_file_and_line(good: Path) -> None:
    write(good / "questions.en.jsonl", [
        question("en-q1", ["en-p1"], "6.5 bar"),
        question("en-q2", ["en-p404"], "x"),                       # line 2: unknown passage
        "{not json",                                               # line 3
        {**question("en-q3", ["en-p1"], "bar"), "relevent": []},   # line 4: misspelt key
        question("en-q1", ["en-p1"], "bar"),                       # line 5: duplicate id
        question("en-q5", ["en-p2"], "7 bar"),                     # line 6: answer not in the passage
        question("en-q6", [], "bar", type_="vague"),               # line 7: two field errors
        question("en-q7", ["en-p1"], "bar", lang="zh"),            # line 8: lang vs file name
    ])
    with pytest.raises(DatasetError) as e:
        dataset.load(good)
    problems = e.value.problems
    expect = ["2: question 'en-q2'", "3: invalid JSON", "4: relevent: Extra inputs",
              "5: duplicate question id 'en-q1' (first at questions.en.jsonl:1)",
              "6: question 'en-q5': answer '7 bar' occurs in none", "7: relevant:", "7: type:",
              "8: lang 'zh'"]
    for prefix in expect:
        assert any(p.startswith(f"questions.en.jsonl:{prefix}") for p in problems), (prefix, problems)
    assert len(problems) == len(expect)
    assert "en-p404" in str(e.value)


def test_passage_problems(good: Path) -> None:
    write(good / "passages.zh.jsonl", [passage("en-p1", "重复", "zh"), {**passage("zh-p2", ""), "lang": "zh"},
                                       {**passage("zh-p3", "x", "zh"), "created_at": "14/03/2025"}, "[1]",
                                       passage("zh p5", "空格", "zh")])
    with pytest.raises(DatasetError) as e:
        dataset.load(good)
    text = str(e.value)
    assert "passages.zh.jsonl:1: duplicate passage id 'en-p1' (first at passages.en.jsonl:1)" in text
    assert "passages.zh.jsonl:2: text:" in text and "passages.zh.jsonl:3: created_at:" in text
    assert "passages.zh.jsonl:4: expected a JSON object" in text
    assert "passages.zh.jsonl:5: id: String should match pattern" in text  # not a valid document id
    # zh-q1's passage is now invalid, so its relevant id is missing too
    assert "questions.zh.jsonl:1: question 'zh-q1': relevant ids not among the passages: ['zh-p1']" in text


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no passages\.\*\.jsonl files"):
        dataset.load(tmp_path)
    write(tmp_path / "passages.en.jsonl", [passage("en-p1", "x")])
    with pytest.raises(DatasetError, match=r"no questions\.\*\.jsonl files"):
        dataset.load(tmp_path)


def test_fold_ignores_case_width_and_spacing() -> None:
    assert dataset.fold("  6.5\n BAR ") == "6.5 bar"
    assert dataset.fold("ＡＢＣ１２") == "abc12"


def test_the_bundled_set_is_valid() -> None:
    s = dataset.load()
    assert len(s.passages) >= 200 and len(s.questions) >= 100
    assert {q.lang for q in s.questions} == {"en", "zh"}
    assert {q.type for q in s.questions} == {"exact", "paraphrase", "mixed"}
