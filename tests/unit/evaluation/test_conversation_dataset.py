"""Loading and validating the conversational evaluation set: every rule reported as file:line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest

from deployments.evaluation import dataset
from deployments.evaluation.dataset import ConversationType, DatasetError


def write(path: Path, rows: list[dict | str]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def conv(cid: str, relevant: list[str], *texts: str, lang: str = "en", type_: str = "coreference",
         standalone: str = "What does the KR-15 cost?") -> dict:
    return {"id": cid, "lang": lang, "type": type_, "turns": turns(*texts), "relevant": relevant,
            "standalone": standalone}


GOOD_TURNS = ("Which compressor suits a small workshop?", "The KR-15.", "What does it cost?")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    passage = {"title": "t", "tags": [], "source": "kb/x.md"}
    write(tmp_path / "passages.en.jsonl", [{**passage, "id": "en-p1", "text": "The KR-15 costs EUR 9.", "lang": "en"},
                                           {**passage, "id": "en-p2", "text": "The KR-22 costs EUR 12.", "lang": "en"}])
    write(tmp_path / "passages.zh.jsonl", [{**passage, "id": "zh-p1", "text": "LS-15 单价 900 元。", "lang": "zh"}])
    write(tmp_path / "questions.en.jsonl", [{"id": "en-q1", "question": "KR-15 price?", "lang": "en",
                                             "relevant": ["en-p1"], "type": "exact", "answer": "EUR 9"}])
    write(tmp_path / "conversations.en.jsonl", [conv("en-c1", ["en-p1"], *GOOD_TURNS), "",
                                                conv("en-c2", ["en-p2", "en-p1"], "Hi", "Hello.", "KR-22 price?",
                                                     type_="self_contained", standalone="KR-22 price?")])
    write(tmp_path / "conversations.zh.jsonl", [conv("zh-c1", ["zh-p1"], "LS-15 是什么？", "一款空压机。", "它多少钱？",
                                                     lang="zh", type_="ellipsis", standalone="LS-15 多少钱？")])
    return tmp_path


def test_loads_conversations_in_file_order(good: Path) -> None:
    s = dataset.load(good)
    assert [c.id for c in s.conversations] == ["en-c1", "en-c2", "zh-c1"]
    c = s.conversations[0]
    assert c.question == "What does it cost?"
    assert [(t.role, t.content) for t in c.history] == [("user", GOOD_TURNS[0]), ("assistant", GOOD_TURNS[1])]
    assert s.conversations[1].relevant == ["en-p2", "en-p1"] and s.conversations[2].type == "ellipsis"


def test_conversations_are_optional_and_can_be_skipped(good: Path) -> None:
    for f in good.glob("conversations.*.jsonl"):
        f.unlink()
    assert dataset.load(good).conversations == []
    write(good / "conversations.en.jsonl", ["{broken"])
    with pytest.raises(DatasetError, match=r"conversations\.en\.jsonl:1: invalid JSON"):
        dataset.load(good)
    skipped = dataset.load(good, conversations=False)  # not read at all
    assert skipped.conversations == [] and [q.id for q in skipped.questions] == ["en-q1"]


def test_every_rule_is_reported_with_file_and_line(good: Path) -> None:
    write(good / "conversations.en.jsonl", [
        conv("en-c1", ["en-p1"], *GOOD_TURNS),                                    # 1: fine
        conv("en-c2", ["en-p404"], *GOOD_TURNS),                                  # 2: unknown passage
        conv("en-c3", ["en-p1", "en-p1"], *GOOD_TURNS),                           # 3: repeated id
        conv("en-c4", ["en-p1"], "What does the KR-15 cost?", standalone="x"),    # 4: no earlier turn
        conv("en-c5", ["en-p1"], "Which one?", "The KR-15."),                     # 5: ends with the assistant
        {**conv("en-c6", ["en-p1"]), "turns": [{"role": "user", "content": "KR-15?"},
                                               {"role": "user", "content": "Its price?"}]},  # 6: no alternation
        conv("en-c7", ["en-p1"], *GOOD_TURNS, type_="self_contained"),            # 7: control != its standalone
        conv("en-c8", ["en-p1"], "Hi", "Hello.", "What does the KR-15 cost?"),    # 8: non-control == standalone
        conv("en-c9", ["zh-p1"], *GOOD_TURNS),                                    # 9: passage in another language
        conv("en-c10", ["zh-p1"], *GOOD_TURNS, lang="zh"),                        # 10: lang vs file name
        conv("en-c1", ["en-p1"], *GOOD_TURNS),                                    # 11: duplicate id
        {**conv("en-c12", ["en-p1"]), "turns": [{"role": "system", "content": "x"},
                                                {"role": "user", "content": ""}]},  # 12: bad role, empty text
        conv("en-c13", ["en-p1"], *GOOD_TURNS, type_="vague"),                    # 13: unknown type
        {**conv("en-c14", ["en-p1"], *GOOD_TURNS), "relevent": []},               # 14: misspelt key
        {**conv("en-c15", ["en-p1"]), "turns": []},                               # 15: no turns at all
        "[1, 2]",                                                                 # 16: not an object
    ])
    with pytest.raises(DatasetError) as e:
        dataset.load(good)
    problems = e.value.problems
    expect = [
        "2: conversation 'en-c2': relevant ids not among the passages: ['en-p404']",
        "3: conversation 'en-c3': relevant ids repeat",
        "4: conversation 'en-c4': needs at least one earlier turn",
        "5: conversation 'en-c5': the last turn must be the user's follow-up, not 'assistant'",
        "6: conversation 'en-c6': roles must alternate; turn 2 is a second 'user' turn in a row",
        "7: conversation 'en-c7': a self_contained follow-up is its own standalone question",
        "8: conversation 'en-c8': the follow-up equals its standalone question",
        "9: conversation 'en-c9': relevant passages in another language than 'en': ['zh-p1']",
        "10: lang 'zh' differs from the file's language 'en'",
        "11: duplicate conversation id 'en-c1' (first at conversations.en.jsonl:1)",
        "12: turns.0.role:", "12: turns.1.content:",
        "13: type:", "14: relevent: Extra inputs", "15: turns:", "16: expected a JSON object",
    ]
    for prefix in expect:
        assert any(p.startswith(f"conversations.en.jsonl:{prefix}") for p in problems), (prefix, problems)
    assert len(problems) == len(expect), problems


def test_one_turn_that_is_the_assistants_reports_both_rules(good: Path) -> None:
    write(good / "conversations.zh.jsonl", [{**conv("zh-c1", ["zh-p1"], lang="zh"),
                                             "turns": [{"role": "assistant", "content": "你好"}]}])
    with pytest.raises(DatasetError) as e:
        dataset.load(good)
    assert [p.split(": ", 2)[2] for p in e.value.problems] == [
        "needs at least one earlier turn before the follow-up",
        "the last turn must be the user's follow-up, not 'assistant'"]


def test_the_bundled_conversations_are_valid_and_cover_every_type() -> None:
    s = dataset.load()
    convs = s.conversations
    assert len(convs) >= 30
    langs = Counter(c.lang for c in convs)
    assert set(langs) == {"en", "zh"} and min(langs.values()) >= 10, langs
    types = Counter(c.type for c in convs)
    assert set(types) == set(get_args(ConversationType)), types
    assert types["self_contained"] >= 3  # the control group
    assert all(c.id.startswith(f"{c.lang}-c") for c in convs)
    # the follow-ups are not copies of the question set's questions
    assert not {c.question for c in convs} & {q.question for q in s.questions}
