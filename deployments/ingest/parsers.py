"""Turn files into documents: .txt/.md, .html, .pdf and .jsonl (one document per line).

Every parser raises :class:`BadFile` with a reason a person can act on (empty, binary, not
UTF-8, corrupt PDF, too large ...): the pipeline reports it for that file and goes on with the
rest. A .jsonl file's bad lines are reported and skipped; its good lines go in.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deployments.config import IngestConfig
from deployments.preprocess.text import normalize
from deployments.protocol.api import DocumentIn

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".jsonl"}
_BLOCK_TAGS = ["p", "div", "br", "li", "ul", "ol", "tr", "td", "th", "table", "section", "article", "header",
               "footer", "main", "aside", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd",
               "figcaption", "hr"]
_BLANK_LINES = re.compile(r"\n[ \t]*(\n[ \t]*)+")


class BadFile(ValueError):
    """A file (or line) that cannot be ingested; the message says why."""


@dataclass(frozen=True)
class Document:
    """A parsed document. ``doc_id`` is stable: given (API, .jsonl ``id``) or derived from
    ``source``, so re-ingesting the same source finds and replaces the same document."""

    doc_id: str
    source: str
    title: str
    text: str
    tags: tuple[str, ...] = ()
    created_at: int = 0  # epoch seconds; 0 when unknown
    acl: tuple[str, ...] = ()  # groups that may read it; empty: the whole tenant


def source_doc_id(source: str) -> str:
    """The document id of a file-backed document: a hash of its stable source name."""
    return hashlib.sha256(source.encode()).hexdigest()[:32]


@dataclass
class Parsed:
    """What one file gave: its documents and the problems of lines that were skipped."""

    documents: list[Document] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_file(path: Path, source: str, cfg: IngestConfig) -> Parsed:
    """Parse one local file by its suffix (its size is checked before it is read).

    Raises:
        BadFile: unsupported type, too large, empty, binary, undecodable or corrupt.
        OSError: the file cannot be read.
    """
    check_suffix(path.name)
    stat = path.stat()
    check_size(stat.st_size, cfg)
    return parse_bytes(path.read_bytes(), path.name, source, int(stat.st_mtime), cfg)


def parse_bytes(raw: bytes, name: str, source: str, created: int, cfg: IngestConfig) -> Parsed:
    """Parse one file's content; ``name`` (its file name) gives the type and the fallback title.

    Raises:
        BadFile: unsupported type, too large, empty, binary, undecodable or corrupt.
    """
    suffix = check_suffix(name)
    check_size(len(raw), cfg)
    stem = Path(name).stem
    if suffix == ".pdf":
        return Parsed([_pdf(raw, stem, source, created)])
    text = _decode(raw)
    if suffix == ".jsonl":
        return _jsonl(text, source)
    if suffix in HTML_SUFFIXES:
        title, body = _html(text)
        return Parsed([_document(source, title or stem, body, created)])
    title, body = _markdown_title(text)
    return Parsed([_document(source, title or stem, body, created)])


def check_suffix(name: str) -> str:
    """The file's (lower-case) suffix; BadFile unless it is one of :data:`SUFFIXES`."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise BadFile(f"unsupported file type {suffix or '(none)'}")
    return suffix


def check_size(size: int, cfg: IngestConfig) -> None:
    """BadFile when a file of ``size`` bytes is empty or over ``cfg.max_file_bytes``."""
    if size > cfg.max_file_bytes:
        raise BadFile(f"file is {size} bytes; the limit is {cfg.max_file_bytes}")
    if size == 0:
        raise BadFile("empty file")


def _decode(raw: bytes) -> str:
    if b"\x00" in raw:
        raise BadFile("binary content (NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadFile(f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _document(source: str, title: str, text: str, created: int, doc_id: str | None = None,
              tags: tuple[str, ...] = (), acl: tuple[str, ...] = ()) -> Document:
    text = _BLANK_LINES.sub("\n\n", text.replace("\r\n", "\n")).strip()
    if not normalize(text):  # nothing visible (zero-width and control characters do not count)
        raise BadFile("no text")
    return Document(doc_id or source_doc_id(source), source, title.strip()[:1024], text, tags, created, acl)


def _markdown_title(text: str) -> tuple[str, str]:
    # A leading "# " heading becomes the title (stored and shown with every chunk), not chunk text.
    first, _, rest = text.strip().partition("\n")
    if first.startswith("# ") and rest.strip():
        return first[2:], rest
    return "", text


def _html(markup: str) -> tuple[str, str]:
    """Title and visible text of an HTML page; block elements become line breaks."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    for tag in soup(["head", "title", "script", "style", "noscript", "template", "nav", "svg"]):
        tag.decompose()
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    for tag in soup.find_all(_BLOCK_TAGS):  # line breaks around blocks only: "pump<b>s</b>" stays "pumps"
        tag.insert_before("\n")
        tag.insert_after("\n")
    text = soup.get_text()
    lines = (re.sub(r"[ \t\xa0]+", " ", line).strip() for line in text.splitlines())
    return title, "\n".join(lines)


def _pdf(raw: bytes, stem: str, source: str, created: int) -> Document:
    """Text of every page (pypdf); a scanned PDF without a text layer is reported, not OCRed."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    if not raw.startswith(b"%PDF-"):
        raise BadFile("not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            raise BadFile("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = meta.title if meta is not None and isinstance(meta.title, str) else ""  # may be any PDF object
    except BadFile:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise BadFile(f"corrupt PDF ({type(e).__name__}: {e})") from None
    if not any(p.strip() for p in pages):
        raise BadFile("PDF has no text layer (scanned?)")
    return _document(source, title.strip() or stem, "\n\n".join(pages), created)


def _jsonl(text: str, source: str) -> Parsed:
    """One document per line: ``{"text": ..., "id"?, "title"?, "source"?, "tags"?, "created_at"?, "acl"?}``."""
    out = Parsed()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
            if not isinstance(obj, dict):
                raise BadFile("not a JSON object")
            obj.setdefault("id", source_doc_id(f"{source}#{n}"))
            # Known fields only: anything else (e.g. evaluation labels) is not the document's.
            doc = DocumentIn.model_validate({k: obj[k] for k in DocumentIn.model_fields if k in obj})
            src = doc.source or f"{source}#{doc.id}"
            out.documents.append(_document(src, doc.title, doc.text, int(doc.created_at or 0), doc.id, tuple(doc.tags),
                                           tuple(doc.acl)))
        except (ValueError, ValidationError, RecursionError) as e:  # JSONDecodeError, BadFile: ValueErrors
            out.problems.append(f"line {n}: {_short(e)}")
    if not out.documents:
        raise BadFile("no valid lines" + (f" ({out.problems[0]})" if out.problems else ""))
    return out


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(e)
