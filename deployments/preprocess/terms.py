"""Key terms: the identifiers, version strings, years and model numbers a text names.

BM25 cannot tell near-duplicates apart by them: the lexical analyser (:mod:`.text`) splits
``3.4.1`` into ``3 4 1`` (so ``3.4.0`` shares two of its three tokens) and the dense encoder sees
``HX-420`` and ``HX-430`` as almost the same vector. The search stage therefore compares key
terms whole (:mod:`deployments.search.precision`): a passage that names the asked ``3.4.1`` is
preferred over its twin that names ``3.4.0``. Questions and passages go through this one
function, so both sides agree on what a key term is.

A key term is a maximal run of ASCII letters and digits joined by ``-``, ``_`` or ``.`` that
 - mixes letters and digits (``HX-420``, ``KT-4410-C``, ``E4471``, ``x86_64``, ``v2``), or
 - is digits with a dot between them (``3.4.1``, ``4.2``: versions, also decimals such as
   ``7.5``, which pick out a passage just as exactly), or
 - is a year 1900-2099 on its own or inside a date (``2022``, ``2024-02-06`` gives ``2024``).
Plain integers other than years (``8 bar``, ``30 days``) are not: they are too common to say
which of two twins is meant.
"""

from __future__ import annotations

import re
import unicodedata

# Not preceded by a letter or digit: "ABC-1" inside "XABC-1" is no term of its own. Every key
# term holds a digit, so the lookahead skips the (many) runs without one inside the regex engine:
# the search stage runs this over every candidate passage (20 per query), and testing each word in
# Python cost ~1 ms per passage. (A lookahead that sees a digit just past a run only lets through
# a run that _terms_of_run then drops.)
_RUN = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9._-]*\d)[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*")
_YEAR = re.compile(r"(?:19|20)\d\d")
_VERSION_PREFIX = re.compile(r"v(?=\d+\.\d)")  # "v3.4.1" names the same version as "3.4.1"


def canonical(run: str) -> str:
    """The form two spellings of one term share: case-folded, without ``-``/``_`` (people write
    ``HX420`` and ``HX-420`` for one model) and without a version's leading ``v``."""
    return _VERSION_PREFIX.sub("", run.casefold().replace("-", "").replace("_", ""), count=1)


def _terms_of_run(run: str) -> list[str]:
    has_alpha = any(c.isalpha() for c in run)
    has_digit = any(c.isdigit() for c in run)
    if has_alpha and has_digit:
        return [canonical(run)]
    if not has_digit:
        return []
    if re.search(r"\d\.\d", run):
        return [canonical(run)]
    return [p for p in re.split(r"[-_]", run) if _YEAR.fullmatch(p)]  # a year, or a date's year


def key_terms(text: str) -> tuple[str, ...]:
    """The key terms of ``text`` in canonical form, first occurrence order, no repeats.

    Full-width characters are NFKC-folded first (``ＨＸ－４２０`` is ``HX-420``); Han characters
    end a run, so codes inside Chinese text are found too.
    """
    folded = unicodedata.normalize("NFKC", text)
    out: dict[str, None] = {}
    for m in _RUN.finditer(folded):
        for term in _terms_of_run(m.group(0)):
            out.setdefault(term)
    return tuple(out)
