"""The texts that curation compares: which part of a record, normalised how.

Normalisation (:func:`normalize`) is Unicode NFKC, then case folding, then every
run of whitespace collapsed to one space, then stripped. Word tokens
(:func:`words`) are the runs of letters and digits of the normalised text, so
punctuation never separates two texts.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from prefkit.data.records import AnyRecord, Text, render_text

Field = Literal["prompt", "response", "pair", "all"]
FIELDS = ("prompt", "response", "pair", "all")

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed to single spaces and stripped."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    """Word tokens of the normalised text (punctuation dropped)."""
    return words_of_normalized(normalize(text))


def words_of_normalized(normalized: str) -> list[str]:
    """Word tokens of a text that :func:`normalize` has already normalised."""
    return _WORD.findall(normalized)


def responses_of(record: AnyRecord) -> list[Text]:
    """The record's responses in field order."""
    return [text for _, text in record.named_responses()]


def unit_texts(record: AnyRecord, field: Field) -> list[str]:
    """The texts of ``record`` compared under ``field``, rendered as plain text.

    ``prompt``: the prompt. ``response``: the responses, sorted, so that a pair
    with its two responses swapped matches. ``pair``: the prompt, then the sorted
    responses. ``all``: the prompt and every response, each on its own (the
    caller compares them one by one).
    """
    if field == "prompt":
        return [render_text(record.prompt)]
    responses = sorted(render_text(text) for text in responses_of(record))
    if field == "response":
        return responses
    if field == "pair":
        return [render_text(record.prompt), *responses]
    if field == "all":
        return [render_text(record.prompt), *(render_text(t) for t in responses_of(record))]
    raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
