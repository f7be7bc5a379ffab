"""Unit tests of ``deployments.search.store.quote``: Milvus string literals for filter expressions.

milvus-lite has no ``filter_params`` templates, so every value spliced into a filter goes
through ``quote``. These tests parse its output back as a Milvus/JSON-style double-quoted
literal and check that it is exactly one literal holding the original value, so no input can
close the string and inject filter syntax. (``store`` imports pymilvus lazily.)
"""

from __future__ import annotations

import pytest

from deployments.search.filters import quote


def _parse_literal(expr: str) -> tuple[str, str]:
    """Read one double-quoted literal from the start of ``expr``; return (value, rest)."""
    assert expr.startswith('"'), expr
    out, i = [], 1
    while i < len(expr):
        ch = expr[i]
        if ch == "\\":
            assert i + 1 < len(expr), "dangling backslash"
            out.append(expr[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), expr[i + 1 :]
        else:
            out.append(ch)
            i += 1
    raise AssertionError(f"unterminated literal: {expr!r}")


@pytest.mark.parametrize(
    "value",
    [
        "plain.md",
        "",
        '"',
        "\\",
        'say "hi"',
        "ends with backslash\\",
        '\\"',
        'x" or doc_id != "',
        'x\\" or doc_id != \\"',
        "docs/翠岚坪茶园.md",
    ],
)
def test_quote_is_one_literal_holding_the_value(value: str) -> None:
    literal = quote(value)
    parsed, rest = _parse_literal(literal)
    assert rest == "", f"{literal!r} closes early; {rest!r} would be parsed as filter syntax"
    assert parsed == value


def test_injection_attempt_stays_inside_the_string() -> None:
    literal = quote('x" or doc_id != "')
    assert literal == '"x\\" or doc_id != \\""'
    expr = f"doc_id == {literal}"
    # Exactly two unescaped quotes: the ones quote() added.
    unescaped = [i for i, ch in enumerate(expr) if ch == '"' and expr[i - 1] != "\\"]
    assert unescaped == [expr.index('"'), len(expr) - 1]


def test_quote_escapes_backslash_before_quote() -> None:
    # Escaping in the wrong order would turn \" into \\" and close the string.
    assert quote('\\"') == '"\\\\\\""'
    assert quote("\\") == '"\\\\"'
