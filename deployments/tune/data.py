"""Training data of ``ragserve tune``: the collection's chunks, question -> passage pairs with hard
negatives, and the held-out questions the result is judged on.

A training set is a directory: ``chunks.jsonl`` (every live chunk of the collection: the
passages a question may be answered by, and the negatives), ``pairs.jsonl`` (what is trained
on), ``heldout.jsonl`` (questions never trained on, with the documents that answer them) and
``manifest.json`` (counts, origins, the options that made it). Its digest, part of a trained
model's version, covers the three data files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.evaluation.dataset import DatasetError
from deployments.preprocess.text import language
from deployments.tune.artefacts import digest_files

M = TypeVar("M", bound=BaseModel)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Chunk(_Record):
    """One stored chunk: what the encoder embeds for it, and its document."""

    id: str
    doc_id: str
    text: str


class Pair(_Record):
    """A question, the chunk that answers it, and chunks that look like answers but are not."""

    question: str = Field(min_length=1)
    positive: str = Field(description="Chunk id of the answer.")
    doc_id: str = Field(description="Document of the answer: no negative may come from it.")
    negatives: tuple[str, ...] = Field((), description="Chunk ids ranked high by the current encoder, of other "
                                       "documents (hard negatives).")
    origin: Literal["labelled", "synthetic"]
    lang: str


class HeldOut(_Record):
    """A question kept out of training, and the documents that answer it."""

    id: str
    question: str = Field(min_length=1)
    relevant: tuple[str, ...] = Field(min_length=1, description="Document ids.")
    lang: str
    type: str = "labelled"


class Labelled(_Record):
    """One line of a user's labelled file: a question and the document that answers it."""

    question: str = Field(min_length=1)
    doc_id: str = Field(min_length=1)


FILES = ("chunks.jsonl", "pairs.jsonl", "heldout.jsonl")


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    """Records of ``path``, one per line; every bad line is reported as ``file:line: message``."""
    out, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(model.model_validate_json(line))
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            problems.append(f"{path.name}:{n}: {'.'.join(map(str, err['loc'])) or 'line'}: {err['msg']}")
    if problems:
        raise DatasetError(problems)
    return out


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> None:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")


@dataclass(frozen=True)
class TrainingSet:
    """Chunks, pairs and held-out questions, with how they were made."""

    chunks: tuple[Chunk, ...]
    pairs: tuple[Pair, ...]
    heldout: tuple[HeldOut, ...]
    meta: dict[str, Any]

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, records in zip(FILES, (self.chunks, self.pairs, self.heldout), strict=True):
            write_jsonl(directory / name, records)
        counts = {"chunks": len(self.chunks), "pairs": len(self.pairs), "heldout": len(self.heldout),
                  "by_origin": _count(p.origin for p in self.pairs), "by_lang": _count(p.lang for p in self.pairs)}
        (directory / "manifest.json").write_text(json.dumps({**self.meta, **counts}, indent=2, sort_keys=True),
                                                  encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: Path) -> "TrainingSet":
        missing = [n for n in FILES if not (directory / n).exists()]
        if missing:
            raise DatasetError([f"{directory}: missing {', '.join(missing)} (make it with `ragserve tune data`)"])
        meta_path = directory / "manifest.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        return cls(tuple(read_jsonl(directory / "chunks.jsonl", Chunk)), tuple(read_jsonl(directory / "pairs.jsonl", Pair)),
                   tuple(read_jsonl(directory / "heldout.jsonl", HeldOut)), meta)

    @staticmethod
    def digest(directory: Path) -> str:
        """The content hash of a saved set's data files (part of a trained model's version)."""
        return digest_files([directory / n for n in FILES])

    def check(self) -> None:
        """Every pair names stored chunks and no held-out question is trained on.

        Raises:
            DatasetError: listing each problem.
        """
        ids = {c.id for c in self.chunks}
        problems = [f"pairs: chunk {cid!r} is not in chunks.jsonl" for p in self.pairs
                    for cid in (p.positive, *p.negatives) if cid not in ids]
        trained = {p.question.strip().casefold() for p in self.pairs}
        problems += [f"heldout: {h.id!r} is also a training question" for h in self.heldout
                     if h.question.strip().casefold() in trained]
        if not self.pairs:
            problems.append("pairs: nothing to train on")
        if problems:
            raise DatasetError(problems)


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def read_chunks(store: Any, batch: int = 1000) -> list[Chunk]:
    """Every live chunk of a collection (``search.store.ChunkStore``), in id order."""
    from deployments.search.filters import LIVE

    it = store.client.query_iterator(store.name, batch_size=batch, filter=LIVE, output_fields=["id", "doc_id", "text"],
                                     timeout=store.timeout)
    rows: list[dict[str, Any]] = []
    try:
        while page := it.next():
            rows.extend(page)
    finally:
        it.close()
    return sorted((Chunk(id=r["id"], doc_id=r["doc_id"], text=r["text"]) for r in rows), key=lambda c: c.id)


def split(items: Sequence[Any], heldout_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded shuffle, then the last ``heldout_fraction`` held out."""
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = len(order) - round(len(order) * heldout_fraction)
    return order[:cut], order[cut:]


def heldout_of(labelled: Sequence[Labelled], prefix: str = "labelled") -> list[HeldOut]:
    """Labelled questions as held-out questions (relevant: their document)."""
    return [HeldOut(id=f"{prefix}-{i}", question=x.question, relevant=(x.doc_id,), lang=language(x.question))
            for i, x in enumerate(labelled)]


def heldout_from_evalset(data_dir: Path | None) -> list[HeldOut]:
    """An evaluation set's questions (``ragserve eval``'s format; default: the bundled set) as
    held-out questions, with their types."""
    from deployments.evaluation.dataset import load

    evalset = load(data_dir, conversations=False)
    return [HeldOut(id=q.id, question=q.question, relevant=tuple(q.relevant), lang=q.lang, type=q.type)
            for q in evalset.questions]
