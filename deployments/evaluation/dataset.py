"""The labelled evaluation set: passages, questions and conversations in JSON Lines, loaded and
validated.

A set is a directory holding ``passages.*.jsonl`` and ``questions.*.jsonl`` (one file per
language, e.g. ``passages.en.jsonl``), and optionally ``conversations.*.jsonl``. Each passage
becomes one document (its ``id`` is the document id); each question names the passage ids that
answer it and a short answer string that occurs in one of them; each conversation is a chat whose
last user turn (the follow-up) depends on the earlier turns, with the passage ids that answer that
follow-up. Every problem is reported as ``file:line: message``, all of them at once, so a
hand-written set can be fixed in one pass.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.protocol.types import MAX_TAGS, DocId, Tag

#: Most problems listed in one :class:`DatasetError` message (the rest are counted).
MAX_LISTED = 25


def default_dir() -> Path:
    """The evaluation set bundled with the package."""
    return Path(str(resources.files("deployments") / "data" / "eval"))


class DatasetError(ValueError):
    """The evaluation set is missing or invalid; ``problems`` are ``file:line: message`` strings."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        head = f"invalid evaluation set ({len(problems)} problems):"
        super().__init__("\n  ".join([head, *listed]) + more)


class _Record(BaseModel):
    # Unknown keys are errors: a misspelt "relevent" must not silently evaluate nothing.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Passage(_Record):
    """One passage; sent to the server as one document (so ids, tags, title and source obey the
    limits of the document API, checked here with the line that breaks them)."""

    id: DocId = Field(description="Document id, unique across the set.")
    title: str = Field("", max_length=1024, description="Document title.")
    text: str = Field(min_length=1, description="Passage text (fits one chunk).")
    lang: str = Field(min_length=1, description="Language code, e.g. en or zh.")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="Free-form tags.")
    source: str = Field("", max_length=2048, description="Where the passage comes from.")
    created_at: date | None = Field(None, strict=False, description="ISO date, e.g. 2025-03-14.")

    def document(self) -> dict[str, Any]:
        """The passage as a document of ``POST /v1/documents`` (no source: the server uses the id)."""
        doc: dict[str, Any] = {"id": self.id, "text": self.text, "title": self.title, "tags": list(self.tags)}
        if self.source:
            doc["source"] = self.source
        if self.created_at is not None:
            doc["created_at"] = self.created_at.isoformat()
        return doc

    @property
    def cluster(self) -> str:
        """The near-duplicate cluster: passages whose ``source`` lies in one directory (a product
        family, a series of release notes, revisions of one policy); the id when there is no source."""
        return self.source.rsplit("/", 1)[0] if "/" in self.source else self.id


class Question(_Record):
    """One labelled question."""

    id: str = Field(min_length=1, description="Question id, unique across the set.")
    question: str = Field(min_length=1, description="The question text.")
    lang: str = Field(min_length=1, description="Language code, e.g. en or zh.")
    relevant: list[str] = Field(min_length=1, description="Ids of the passages that answer it.")
    type: Literal["paraphrase", "exact", "mixed"] = Field(description="How the question relates to the text.")
    answer: str = Field(min_length=1, description="Short fact string occurring in a relevant passage.")


class Turn(_Record):
    """One message of a conversation."""

    role: Literal["user", "assistant"] = Field(description="Who wrote it.")
    content: str = Field(min_length=1, description="The message text.")


#: How a follow-up depends on the conversation before it (``self_contained``: it does not; the
#: control group, where every way of building the search query should do equally well).
ConversationType = Literal["ellipsis", "coreference", "topic_shift_with_reference", "answer_reference",
                           "self_contained"]


class Conversation(_Record):
    """A labelled conversation: the last turn is the user's follow-up that is scored."""

    id: str = Field(min_length=1, description="Conversation id, unique across the set.")
    lang: str = Field(min_length=1, description="Language code, e.g. en or zh.")
    type: ConversationType = Field(description="How the follow-up depends on the earlier turns.")
    turns: list[Turn] = Field(min_length=1, description="The turns, oldest first; user and assistant "
                              "alternate and the last is the user's follow-up.")
    relevant: list[str] = Field(min_length=1, description="Ids of the passages that answer the follow-up.")
    standalone: str = Field(min_length=1, description="The follow-up rewritten by hand as a question that "
                            "needs no context: what a perfect rewrite would search.")

    @property
    def question(self) -> str:
        """The follow-up (the last user turn)."""
        return self.turns[-1].content

    @property
    def history(self) -> list[Turn]:
        """The turns before the follow-up, oldest first."""
        return self.turns[:-1]


@dataclass(frozen=True)
class EvalSet:
    """A validated evaluation set."""

    directory: Path
    passages: list[Passage]
    questions: list[Question]
    conversations: list[Conversation] = field(default_factory=list)

    def twins(self, q: Question) -> list[str]:
        """Ids of the near-duplicates of ``q``'s relevant passages: the other passages of their
        clusters (see :attr:`Passage.cluster`), in set order."""
        rel = set(q.relevant)
        clusters = {p.cluster for p in self.passages if p.id in rel}
        return [p.id for p in self.passages if p.cluster in clusters and p.id not in rel]


def fold(text: str) -> str:
    """Case- and width-insensitive form with whitespace collapsed, for "does it contain" checks."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).casefold().strip()


def jsonl_lines(path: Path, problems: list[str]) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) for every non-blank line; bad JSON is a problem, not an exception
    (a generator, so problems stay in line order with those found in the records)."""
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            where = f"{path.name}:{no}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj


def _parse(path: Path, model: type[_Record], problems: list[str]) -> list[tuple[str, Any]]:
    """Records of one file; each invalid field is a problem naming the field."""
    # passages.en.jsonl -> "en": the records' lang must agree with the file they are in.
    file_lang = path.name.split(".")[1] if path.name.count(".") >= 2 else None
    records = []
    for where, obj in jsonl_lines(path, problems):
        try:
            rec = model.model_validate(obj)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "(record)"
                problems.append(f"{where}: {loc}: {err['msg']}")
            continue
        if file_lang and rec.lang != file_lang:
            problems.append(f"{where}: lang {rec.lang!r} differs from the file's language {file_lang!r}")
        records.append((where, rec))
    return records


def _unique(records: list[tuple[str, Any]], kind: str, problems: list[str]) -> dict[str, Any]:
    seen: dict[str, str] = {}
    out = {}
    for where, rec in records:
        if rec.id in seen:
            problems.append(f"{where}: duplicate {kind} id {rec.id!r} (first at {seen[rec.id]})")
            continue
        seen[rec.id] = where
        out[rec.id] = rec
    return out


def _check_relevant(where: str, kind: str, rec: Question | Conversation, passages: dict[str, Passage],
                    problems: list[str]) -> bool:
    """Relevant ids exist and do not repeat; False (reported) when some are missing."""
    missing = [pid for pid in rec.relevant if pid not in passages]
    if missing:
        problems.append(f"{where}: {kind} {rec.id!r}: relevant ids not among the passages: {missing}")
        return False
    if len(set(rec.relevant)) != len(rec.relevant):
        problems.append(f"{where}: {kind} {rec.id!r}: relevant ids repeat: {rec.relevant}")
    return True


def _check_questions(questions: list[tuple[str, Question]], passages: dict[str, Passage],
                     problems: list[str]) -> None:
    for where, q in questions:
        if not _check_relevant(where, "question", q, passages, problems):
            continue
        # The grounding check looks for this string in the model's answer: it must be a fact the
        # relevant text states, or a correct answer would count as wrong.
        if not any(fold(q.answer) in fold(passages[pid].text) for pid in q.relevant):
            problems.append(f"{where}: question {q.id!r}: answer {q.answer!r} occurs in none of its "
                            f"relevant passages {q.relevant}")


def _check_conversations(conversations: list[tuple[str, Conversation]], passages: dict[str, Passage],
                         problems: list[str]) -> None:
    for where, c in conversations:
        head = f"{where}: conversation {c.id!r}"
        roles = [t.role for t in c.turns]
        if len(roles) < 2:
            problems.append(f"{head}: needs at least one earlier turn before the follow-up")
        if roles[-1] != "user":
            problems.append(f"{head}: the last turn must be the user's follow-up, not {roles[-1]!r}")
        repeats = [i for i in range(1, len(roles)) if roles[i] == roles[i - 1]]
        if repeats:
            problems.append(f"{head}: roles must alternate; turn {repeats[0] + 1} is a second "
                            f"{roles[repeats[0]]!r} turn in a row")
        # A control's follow-up already stands alone, so its rewrite is itself; any other follow-up
        # needs the conversation, so the two differ (or its type is wrong).
        if c.type == "self_contained" and c.standalone != c.question:
            problems.append(f"{head}: a self_contained follow-up is its own standalone question")
        if c.type != "self_contained" and c.standalone == c.question:
            problems.append(f"{head}: the follow-up equals its standalone question: type it self_contained")
        if not _check_relevant(where, "conversation", c, passages, problems):
            continue
        other = sorted({pid for pid in c.relevant if passages[pid].lang != c.lang})
        if other:
            problems.append(f"{head}: relevant passages in another language than {c.lang!r}: {other}")


def load(directory: Path | str | None = None, conversations: bool = True) -> EvalSet:
    """Load and validate every ``passages.*.jsonl`` and ``questions.*.jsonl`` under ``directory``
    (default: the bundled set), in file-name order, and ``conversations.*.jsonl`` if there are any
    (and ``conversations`` is true).

    Raises:
        DatasetError: no passage or question files, bad JSON, invalid or unknown fields, duplicate
            ids, relevant ids that are not passages, answers absent from their passages,
            conversations whose turns do not alternate or end with a user turn — every problem at once.
    """
    root = Path(directory) if directory is not None else default_dir()
    passage_files = sorted(root.glob("passages.*.jsonl"))
    question_files = sorted(root.glob("questions.*.jsonl"))
    problems = [f"{root}: no {pattern} files" for pattern, files in
                (("passages.*.jsonl", passage_files), ("questions.*.jsonl", question_files)) if not files]
    if problems:
        raise DatasetError(problems)
    conversation_files = sorted(root.glob("conversations.*.jsonl")) if conversations else []
    p_records = [r for f in passage_files for r in _parse(f, Passage, problems)]
    q_records = [r for f in question_files for r in _parse(f, Question, problems)]
    c_records = [r for f in conversation_files for r in _parse(f, Conversation, problems)]
    passages = _unique(p_records, "passage", problems)
    questions = _unique(q_records, "question", problems)
    convs = _unique(c_records, "conversation", problems)
    _check_questions([(w, q) for w, q in q_records if questions.get(q.id) is q], passages, problems)
    _check_conversations([(w, c) for w, c in c_records if convs.get(c.id) is c], passages, problems)
    if problems:
        raise DatasetError(problems)
    return EvalSet(root, list(passages.values()), list(questions.values()), list(convs.values()))
