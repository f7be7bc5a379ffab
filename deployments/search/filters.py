"""Compile a typed :class:`~deployments.protocol.Filter` into a Milvus boolean expression.

Requests never carry expression text: they carry a validated structure, and this module is the
only place that writes Milvus syntax. Every string value goes through :func:`quote` (string
literal escaping) and, for prefixes, :func:`like_prefix` (LIKE wildcard escaping), so a value
such as ``x" or doc_id != "`` stays a value. Every expression also hides the tombstone rows
that a document replacement leaves behind for an instant (see ``ChunkStore.replace_document``).
"""

from __future__ import annotations

from deployments.protocol.types import Filter

#: Rows a search may see: live chunks only (tombstones have ``live == false``).
LIVE = "live == true"


def quote(value: str) -> str:
    """A Milvus string literal for ``value``: backslashes and double quotes escaped.

    (milvus-lite does not support ``filter_params`` templates, so escaping is done here.)
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def like_prefix(prefix: str) -> str:
    """A LIKE pattern literal matching strings that start with ``prefix``: its ``%`` and ``_``
    are escaped so they match themselves, not any characters."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return quote(escaped + "%")


def _in(field: str, values: tuple[str, ...]) -> str:
    return f"{field} in [{', '.join(quote(v) for v in values)}]"


def _array(fn: str, values: tuple[str, ...]) -> str:
    return f"{fn}(tags, [{', '.join(quote(v) for v in values)}])"


def acl_clause(groups: tuple[str, ...]) -> str:
    """Rows readable by a caller of ``groups``: their ``acl`` shares one of them. Always a
    separate conjunct, so nothing in a request's filter can widen it."""
    return f"ARRAY_CONTAINS_ANY(acl, [{', '.join(quote(g) for g in groups)}])"


def compile_filter(f: Filter | None, acl: tuple[str, ...] | None = None) -> str:
    """The Milvus expression for ``f`` (``None``: live rows only), restricted to the rows the
    groups ``acl`` may read (``None``: no ACL restriction, a server without keys)."""
    parts = [LIVE] if acl is None else [LIVE, acl_clause(acl or ("",))]  # no groups: nothing matches (no group is "")
    if f is None:
        return " and ".join(parts)
    if f.doc_ids:
        parts.append(_in("doc_id", f.doc_ids))
    if f.sources:
        parts.append(_in("source", f.sources))
    if f.source_prefix:
        parts.append(f"source like {like_prefix(f.source_prefix)}")
    if f.tags_any:
        parts.append(_array("ARRAY_CONTAINS_ANY", f.tags_any))
    if f.tags_all:
        parts.append(_array("ARRAY_CONTAINS_ALL", f.tags_all))
    if f.created_after is not None or f.created_before is not None:
        parts.append("created_at > 0")  # an unknown creation time (0) meets no bound on it
    # The time bounds were parsed to ints by the model: formatting an int cannot inject.
    for field, op, value in (("created_at", ">=", f.created_after), ("created_at", "<", f.created_before),
                             ("updated_at", ">=", f.updated_after), ("updated_at", "<", f.updated_before)):
        if value is not None:
            parts.append(f"{field} {op} {int(value)}")
    return " and ".join(parts)
