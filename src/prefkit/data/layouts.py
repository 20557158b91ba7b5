"""Layouts: how the fields of a source row map onto the canonical records.

A :class:`Layout` turns one raw row into zero or more records. Named layouts
cover the formats people publish (``hh-rlhf``, ``trl``, ``ultrafeedback``,
``helpsteer``, ...); :class:`MappingLayout` covers any other layout through a
declarative mapping (``--map KEY=FIELD`` on the command line, a dict in Python).

Mapping keys and what they build:

===================  =======================================================
key                  meaning
===================  =======================================================
``prompt``           prompt text (``a+b`` joins fields with a blank line)
``chosen``           preferred response (pairwise; outcome ``a``)
``rejected``         other response (pairwise)
``response_a/_b``    the two responses of a pair, with ``winner`` or ``votes``
``winner``           which response is better (see ``winner_values``)
``votes``            one vote per annotator (``v1+v2+v3`` or a list field)
``strength``         preference strength; ``margin``; ``weight``; ``soft_label``
``response``         the response of a rating or binary record
``label``            good/bad label (binary)
``rating.NAME``      one rating attribute; ``ratings`` takes a whole mapping
``responses``        the responses of a ranking (a list field or ``f1+f2+...``)
``scores``/``ranks`` the scores (higher better) or ranks (1 best) of a ranking
``response_ids``     identifiers of the ranking's responses
``id``, ``category`` identifier and group of the record
===================  =======================================================

A FIELD may be a dotted path into nested objects (``scores.overall``). Fields
that no key uses are kept in the record's ``metadata``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from prefkit.data.records import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    AnyRecord,
    BinaryRecord,
    FieldError,
    Message,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    Text,
    parse_text,
    record_from_dict,
)
from prefkit.data.sources import FILE_FIELD, PATH_FIELD, SPLIT_FIELD, RawRow
from prefkit.errors import UserInputError

MISSING_STRINGS = frozenset({"", "none", "null", "nan", "na", "n/a"})
"""Strings read as a missing number (CSV cells, the WMT MQM ``None``)."""

DEFAULT_WINNER_VALUES: dict[str, str] = {
    "a": "a",
    "b": "b",
    "tie": "tie",
    "model_a": "a",
    "model_b": "b",
    "response_a": "a",
    "response_b": "b",
    "tie (bothbad)": "tie",
    "equal": "tie",
}
"""Winner/vote values understood without ``--winner-values`` (compared in lower case)."""

TRUE_LABELS = frozenset({"true", "1", "good", "up", "thumbs_up", "yes", "desirable", "positive"})
FALSE_LABELS = frozenset(
    {"false", "0", "bad", "down", "thumbs_down", "no", "undesirable", "negative"}
)

INTERNAL_FIELDS = (FILE_FIELD, PATH_FIELD, SPLIT_FIELD)

MAPPING_KEYS = (
    "prompt",
    "chosen",
    "rejected",
    "response_a",
    "response_b",
    "winner",
    "votes",
    "strength",
    "margin",
    "weight",
    "soft_label",
    "response",
    "responses",
    "scores",
    "ranks",
    "response_ids",
    "label",
    "ratings",
    "id",
    "category",
)


class LayoutError(UserInputError):
    """A mapping or layout specification that cannot work (a user error, not a data error)."""


# --------------------------------------------------------------------------- helpers


def get_path(row: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in ``row``; raises KeyError naming the missing part."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def parse_number(value: Any, field: str) -> float | None:
    """A number from a JSON number or a numeric string; missing markers give ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError(field, "a number", value, "wrong_type")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in MISSING_STRINGS:
            return None
        try:
            return float(text)
        except ValueError:
            raise FieldError(field, "a number", value, "non_numeric") from None
    raise FieldError(field, "a number", value, "wrong_type")


def parse_label(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if text in TRUE_LABELS:
        return True
    if text in FALSE_LABELS:
        return False
    raise FieldError(
        field, "a good/bad label (true/false, 1/0, good/bad, up/down)", value, "unknown_value"
    )


def parse_winner_values(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"a=1,b=2,tie=0"`` -> ``{"1": "a", "2": "b", "0": "tie"}`` (source value -> outcome).

    Several source values may map to one outcome: ``a=1|A,b=2|B``.
    """
    if spec is None:
        return dict(DEFAULT_WINNER_VALUES)
    if isinstance(spec, dict):
        pairs = spec.items()
    else:
        pairs = []
        for part in spec.split(","):
            if "=" not in part:
                raise LayoutError(
                    f"--winner-values: expected OUTCOME=VALUE pairs like 'a=1,b=2,tie=0', found {part!r}"
                )
            outcome, values = part.split("=", 1)
            pairs.append((outcome.strip(), values))
    table: dict[str, str] = {}
    for outcome, values in pairs:
        if outcome not in ("a", "b", "tie"):
            raise LayoutError(f"--winner-values: outcome must be a, b or tie, found {outcome!r}")
        for value in str(values).split("|"):
            table[value.strip().lower()] = outcome
    return table


def parse_outcome(value: Any, field: str, table: dict[str, str]) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip().lower()
    if isinstance(value, bool):
        key = "true" if value else "false"
    if key not in table:
        known = ", ".join(f"{source}={outcome}" for source, outcome in sorted(table.items()))
        raise FieldError(field, f"a winner value ({known})", value, "unknown_value")
    return table[key]


def join_texts(values: list[Any], field: str) -> Text:
    """Join several text fields with a blank line, skipping empty ones."""
    if len(values) == 1:
        return values[0]
    parts = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            raise FieldError(field, "texts (strings) to join", value, "wrong_type")
        if value.strip():
            parts.append(value)
    return "\n\n".join(parts)


def default_id(row: RawRow) -> str:
    name = row.fields.get(PATH_FIELD) if row.fields else None
    return f"{name or row.source.rsplit('/', 1)[-1]}:{row.line}"


def require(fields: dict[str, Any], *names: str) -> None:
    """Raise a ``missing_field`` error for the first of ``names`` absent from ``fields``."""
    for name in names:
        if name not in fields:
            raise FieldError(
                name, "a value (required field missing from the row)", None, "missing_field"
            )


def _metadata_from(row: dict[str, Any], used: Iterable[str]) -> dict[str, Any]:
    roots = {path.split(".", 1)[0] for path in used}
    return {
        key: value
        for key, value in row.items()
        if key not in roots
        and key not in (PATH_FIELD,)
        and not (key == FILE_FIELD and FILE_FIELD in roots)
    }


# --------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    """A way to read rows: its name, how to recognise it, how to convert a row."""

    name: str
    description: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[RawRow], list[AnyRecord]]


@dataclass
class MappingLayout:
    """Any layout, declared as canonical key -> source field(s).

    Args:
        mapping: canonical key -> source field spec (``"instruction+input"``).
        winner_values: what the source's winner/vote values mean, e.g.
            ``"a=1,b=2,tie=0"``; defaults to :data:`DEFAULT_WINNER_VALUES`.
        name: the layout's name in messages.
    """

    mapping: dict[str, str]
    winner_values: str | dict[str, str] | None = None
    name: str = "mapping"
    description: str = "fields mapped with --map"
    _fields: dict[str, list[str]] = field(init=False, repr=False)
    _winners: dict[str, str] = field(init=False, repr=False)
    _ratings: dict[str, list[str]] = field(init=False, repr=False)
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        self._fields, self._ratings = {}, {}
        for key, spec in self.mapping.items():
            if not isinstance(spec, str) or not spec.strip():
                raise LayoutError(f"--map {key}=...: the source field is empty")
            parts = [part.strip() for part in spec.split("+")]
            if key.startswith("rating."):
                self._ratings[key[len("rating.") :]] = parts
            elif key in MAPPING_KEYS:
                self._fields[key] = parts
            else:
                raise LayoutError(
                    f"--map: unknown key {key!r}; known keys: {', '.join(MAPPING_KEYS)}, rating.NAME"
                )
        self._winners = parse_winner_values(self.winner_values)
        self.kind = self._infer_kind()

    def _infer_kind(self) -> str:
        keys = set(self._fields)
        if {"chosen", "rejected"} <= keys:
            return "pairwise"
        if {"response_a", "response_b"} <= keys:
            if not keys & {"winner", "votes", "soft_label"}:
                raise LayoutError(
                    "--map: a pair given as response_a/response_b needs winner=FIELD or votes=FIELDS"
                )
            return "pairwise"
        if "responses" in keys:
            if not keys & {"scores", "ranks"}:
                raise LayoutError("--map: a ranking needs scores=FIELD or ranks=FIELD")
            return "ranking"
        if "response" in keys and (self._ratings or "ratings" in keys):
            return "rating"
        if "response" in keys and "label" in keys:
            return "binary"
        raise LayoutError(
            "--map: cannot tell the record kind; give chosen+rejected, response_a+response_b+winner, "
            "responses+scores, response+rating.NAME, or response+label"
        )

    def detect(self, fields: dict[str, Any]) -> bool:
        return True

    def _values(self, row: RawRow, key: str) -> list[Any]:
        values = []
        for path in self._fields[key]:
            try:
                values.append(get_path(row.fields, path))  # type: ignore[arg-type]
            except KeyError:
                raise FieldError(
                    path, f"a value for {key!r} (field missing from the row)", None, "missing_field"
                ) from None
        return values

    def _one(self, row: RawRow, key: str) -> Any:
        values = self._values(row, key)
        if len(values) != 1:
            raise LayoutError(f"--map {key}: takes one field, got {'+'.join(self._fields[key])}")
        return values[0]

    def _list(self, row: RawRow, key: str) -> list[Any]:
        values = self._values(row, key)
        if len(values) == 1 and isinstance(values[0], (list, tuple)):
            return list(values[0])
        return values

    def _text(self, row: RawRow, key: str) -> Text:
        return join_texts(self._values(row, key), self._fields[key][0])

    def _optional(self, row: RawRow, key: str, parse: Callable[[Any, str], Any]) -> Any:
        if key not in self._fields:
            return None
        return parse(self._one(row, key), self._fields[key][0])

    def convert(self, row: RawRow) -> list[AnyRecord]:
        fields = row.fields or {}
        common: dict[str, Any] = {
            "id": self._one(row, "id") if "id" in self._fields else default_id(row),
            "prompt": self._text(row, "prompt") if "prompt" in self._fields else "",
            "category": self._one(row, "category") if "category" in self._fields else None,
        }
        used = [path for paths in self._fields.values() for path in paths]
        used += [path for paths in self._ratings.values() for path in paths]
        common["metadata"] = _metadata_from(fields, used)
        if common["category"] is not None and not isinstance(common["category"], str):
            common["category"] = str(common["category"])
        if self.kind == "pairwise":
            return [self._pairwise(row, common)]
        if self.kind == "ranking":
            return [self._ranking(row, common)]
        if self.kind == "rating":
            return [self._rating(row, common)]
        return [
            BinaryRecord(
                response=self._text(row, "response"),
                label=parse_label(self._one(row, "label"), self._fields["label"][0]),
                weight=self._optional(row, "weight", parse_number),
                **common,
            )
        ]

    def _pairwise(self, row: RawRow, common: dict[str, Any]) -> PairwiseRecord:
        if "chosen" in self._fields:
            response_a, response_b = self._text(row, "chosen"), self._text(row, "rejected")
            outcome = "a"
        else:
            response_a, response_b = self._text(row, "response_a"), self._text(row, "response_b")
            outcome = None
            if "winner" in self._fields:
                outcome = parse_outcome(
                    self._one(row, "winner"), self._fields["winner"][0], self._winners
                )
        votes = None
        if "votes" in self._fields:
            sources = self._fields["votes"]
            raw_votes = self._list(row, "votes")
            votes = tuple(
                parse_outcome(
                    vote, sources[i] if len(sources) > 1 else f"{sources[0]}[{i}]", self._winners
                )
                for i, vote in enumerate(raw_votes)
            )
        return PairwiseRecord(
            response_a=response_a,
            response_b=response_b,
            outcome=outcome,
            votes=votes,
            strength=self._optional(row, "strength", parse_number),
            margin=self._optional(row, "margin", parse_number),
            weight=self._optional(row, "weight", parse_number),
            soft_label=self._optional(row, "soft_label", parse_number),
            **common,
        )

    def _ranking(self, row: RawRow, common: dict[str, Any]) -> RankingRecord:
        numbers = {}
        for key in ("scores", "ranks"):
            if key in self._fields:
                source = self._fields[key][0]
                numbers[key] = [
                    parse_number(value, f"{source}[{i}]")
                    for i, value in enumerate(self._list(row, key))
                ]
        ids = self._list(row, "response_ids") if "response_ids" in self._fields else None
        return RankingRecord(
            responses=tuple(self._list(row, "responses")), response_ids=ids, **numbers, **common
        )

    def _rating(self, row: RawRow, common: dict[str, Any]) -> RatingRecord:
        ratings: dict[str, float | None] = {}
        if "ratings" in self._fields:
            whole = self._one(row, "ratings")
            if not isinstance(whole, dict):
                raise FieldError(
                    self._fields["ratings"][0],
                    "a mapping of attribute -> number",
                    whole,
                    "wrong_type",
                )
            for name, value in whole.items():
                ratings[str(name)] = parse_number(value, f"{self._fields['ratings'][0]}.{name}")
        for name, paths in self._ratings.items():
            try:
                value = get_path(row.fields, paths[0])  # type: ignore[arg-type]
            except KeyError:
                raise FieldError(
                    paths[0], f"a value for rating {name!r} (field missing)", None, "missing_field"
                ) from None
            ratings[name] = parse_number(value, paths[0])
        return RatingRecord(response=self._text(row, "response"), ratings=ratings, **common)


def parse_map_args(items: Iterable[str]) -> dict[str, str]:
    """``["prompt=instruction+input", ...]`` -> ``{"prompt": "instruction+input", ...}``."""
    mapping: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise LayoutError(f"--map expects KEY=FIELD, found {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in mapping:
            raise LayoutError(f"--map {key}: given twice")
        mapping[key] = value.strip()
    return mapping


# --------------------------------------------------------------------------- named layouts


def _canonical(row: RawRow) -> list[AnyRecord]:
    fields = {key: value for key, value in row.fields.items() if key not in INTERNAL_FIELDS}  # type: ignore[union-attr]
    return [record_from_dict(fields)]


WINNER_FIELD = "winner"
"""Accepted for ``outcome`` in canonical records without ``kind`` (the usual spelling in files)."""

_REQUIRED_BY_KIND: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind -> (fields that must all be present, fields of which one must be present)
    "pairwise": (("prompt", "response_a", "response_b"), ("outcome", WINNER_FIELD, "votes")),
    "ranking": (("prompt", "responses"), ("scores", "ranks")),
    "rating": (("prompt", "response", "ratings"), ()),
    "binary": (("prompt", "response", "label"), ()),
}


def _kind_from_names(fields: dict[str, Any]) -> str | None:
    """The record kind that canonical field names imply (``kind`` itself when present)."""
    if "kind" in fields:
        return fields["kind"] if fields["kind"] in RECORD_TYPES else None
    if "response_a" in fields or "response_b" in fields:
        return "pairwise"
    if "responses" in fields:
        return "ranking"
    if "ratings" in fields:
        return "rating"
    if "label" in fields:
        return "binary"
    return None


def canonical_names(kind: str) -> frozenset[str]:
    """Every field name a canonical record of ``kind`` may carry (``winner`` for pairwise)."""
    names = {item.name for item in dataclass_fields(RECORD_TYPES[kind])}  # type: ignore[arg-type]
    names |= {"schema_version", "kind"}
    if kind == "pairwise":
        names.add(WINNER_FIELD)
    return frozenset(names)


def _looks_canonical_names(fields: dict[str, Any]) -> bool:
    """Only canonical field names, with those the implied kind needs, and no ``kind`` or version."""
    if "kind" in fields or "schema_version" in fields:
        return False
    kind = _kind_from_names(fields)
    if kind is None:
        return False
    required, one_of = _REQUIRED_BY_KIND[kind]
    names = set(fields) - set(INTERNAL_FIELDS)
    return (
        names <= canonical_names(kind)
        and all(name in names for name in required)
        and (not one_of or any(name in names for name in one_of))
    )


def _canonical_by_names(row: RawRow) -> list[AnyRecord]:
    """A canonical record whose kind comes from its field names; ``winner`` is ``outcome``.

    A record with no ``id`` gets the row's position (``file:line``), as other layouts do.
    """
    fields = {key: value for key, value in row.fields.items() if key not in INTERNAL_FIELDS}  # type: ignore[union-attr]
    kind = _kind_from_names(fields)
    if kind is None:
        raise FieldError(
            "kind",
            "canonical field names that imply a kind (response_a/response_b, responses, "
            "ratings or label)",
            sorted(fields)[:12],
            "unknown_layout",
        )
    renamed = WINNER_FIELD in fields
    if renamed:
        if "outcome" in fields:
            raise FieldError(
                WINNER_FIELD, "either 'winner' or 'outcome', not both", fields[WINNER_FIELD]
            )
        fields["outcome"] = fields.pop(WINNER_FIELD)
    fields.setdefault("kind", kind)
    fields.setdefault("id", default_id(row))
    try:
        return [record_from_dict(fields)]
    except FieldError as error:
        if renamed and error.field == "outcome":
            raise FieldError(
                WINNER_FIELD, error.expected, fields["outcome"], error.reason
            ) from None
        raise


PREFKIT_BY_NAMES = Layout(
    "prefkit",
    "prefkit's canonical field names without kind/schema_version; "
    "the kind is read from the field names, 'winner' is the outcome",
    _looks_canonical_names,
    _canonical_by_names,
)
"""The canonical layout recognised by its field names alone (detected, not named by ``--format``)."""


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_transcript(text: str, field: str) -> tuple[Message, ...]:
    """Split an Anthropic HH transcript (``\\n\\nHuman: ...\\n\\nAssistant: ...``) into turns."""
    if not isinstance(text, str):
        raise FieldError(field, "an HH-RLHF transcript (string)", text, "wrong_type")
    pieces = _HH_TURN.split(text)
    if pieces[0].strip():
        raise FieldError(field, "a transcript starting with '\\n\\nHuman:'", text, "bad_transcript")
    turns = []
    for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        turns.append(Message("user" if speaker == "Human" else "assistant", content))
    if not turns or turns[-1].role != "assistant":
        raise FieldError(
            field, "a transcript ending with an '\\n\\nAssistant:' turn", text, "bad_transcript"
        )
    return tuple(turns)


def _hh_rlhf(row: RawRow) -> list[AnyRecord]:
    fields = row.fields or {}
    require(fields, "chosen", "rejected")
    chosen = parse_hh_transcript(fields.get("chosen"), "chosen")
    rejected = parse_hh_transcript(fields.get("rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise FieldError(
            "rejected",
            "the same conversation as 'chosen' up to the final assistant turn",
            "a different prompt",
            "prompt_mismatch",
        )
    prompt = chosen[:-1]
    return [
        PairwiseRecord(
            id=fields.get("id", default_id(row)),
            prompt=prompt if prompt else "",
            response_a=chosen[-1].content,
            response_b=rejected[-1].content,
            outcome="a",
            metadata=_metadata_from(fields, ["chosen", "rejected", "id"]),
        )
    ]


def _is_conversation(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(turn, dict) and "role" in turn for turn in value)
    )


def _trl_pair(row: RawRow) -> list[AnyRecord]:
    fields = row.fields or {}
    require(fields, "chosen", "rejected")
    chosen, rejected = fields["chosen"], fields["rejected"]
    if "prompt" in fields:
        prompt = fields["prompt"]
        if prompt is None:
            raise FieldError("prompt", "a text or conversation", None, "missing_field")
    elif _is_conversation(chosen) and _is_conversation(rejected):
        # Implicit prompt (TRL): the shared leading turns are the prompt.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        prompt = ""
    if _is_conversation(chosen) and len(chosen) == 1:
        chosen = parse_text(chosen, "chosen")[0].content  # type: ignore[index,union-attr]
    if _is_conversation(rejected) and len(rejected) == 1:
        rejected = parse_text(rejected, "rejected")[0].content  # type: ignore[index,union-attr]
    return [
        PairwiseRecord(
            id=fields.get("id", fields.get("prompt_id", default_id(row))),
            prompt=prompt,
            response_a=chosen,
            response_b=rejected,
            outcome="a",
            metadata=_metadata_from(fields, ["prompt", "chosen", "rejected", "id", "prompt_id"]),
        )
    ]


def _trl_unpaired(row: RawRow) -> list[AnyRecord]:
    fields = row.fields or {}
    require(fields, "completion", "label")
    completion = fields["completion"]
    if _is_conversation(completion) and len(completion) == 1:
        completion = parse_text(completion, "completion")[0].content  # type: ignore[index,union-attr]
    return [
        BinaryRecord(
            id=fields.get("id", default_id(row)),
            prompt=fields.get("prompt", ""),
            response=completion,
            label=parse_label(fields.get("label"), "label"),
            metadata=_metadata_from(fields, ["prompt", "completion", "label", "id"]),
        )
    ]


HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _helpsteer(row: RawRow) -> list[AnyRecord]:
    fields = row.fields or {}
    require(fields, "prompt", "response")
    ratings = {name: parse_number(fields.get(name), name) for name in HELPSTEER_ATTRIBUTES}
    return [
        RatingRecord(
            id=fields.get("id", default_id(row)),
            prompt=fields.get("prompt"),
            response=fields.get("response"),
            ratings=ratings,
            metadata=_metadata_from(fields, ["prompt", "response", "id", *HELPSTEER_ATTRIBUTES]),
        )
    ]


def _helpsteer2_preference(row: RawRow) -> list[AnyRecord]:
    """HelpSteer2-Preference: ``preference_strength`` in -3..3; negative means response_1 is better."""
    fields = row.fields or {}
    require(fields, "prompt", "response_1", "response_2")
    strength = parse_number(fields.get("preference_strength"), "preference_strength")
    if strength is None:
        raise FieldError(
            "preference_strength",
            "a number in -3..3",
            fields.get("preference_strength"),
            "missing_field",
        )
    outcome = "tie" if strength == 0 else ("a" if strength < 0 else "b")
    return [
        PairwiseRecord(
            id=fields.get("id", default_id(row)),
            prompt=fields.get("prompt"),
            response_a=fields.get("response_1"),
            response_b=fields.get("response_2"),
            outcome=outcome,
            strength=abs(strength),
            metadata=_metadata_from(
                fields, ["prompt", "response_1", "response_2", "preference_strength", "id"]
            ),
        )
    ]


ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _ultrafeedback(row: RawRow) -> list[AnyRecord]:
    """One rating record per completion: the four aspect ratings (+ overall score)."""
    fields = row.fields or {}
    completions = fields.get("completions")
    if not isinstance(completions, list) or not completions:
        raise FieldError(
            "completions", "a non-empty list of completions", completions, "wrong_type"
        )
    base_id = fields.get("id", fields.get("source_id", default_id(row)))
    records: list[AnyRecord] = []
    for index, completion in enumerate(completions):
        where = f"completions[{index}]"
        if not isinstance(completion, dict):
            raise FieldError(
                where, "an object with 'response' and 'annotations'", completion, "wrong_type"
            )
        annotations = completion.get("annotations") or {}
        ratings: dict[str, float | None] = {}
        for aspect in ULTRAFEEDBACK_ASPECTS:
            note = annotations.get(aspect)
            value = note.get("Rating") if isinstance(note, dict) else note
            ratings[aspect] = parse_number(value, f"{where}.annotations.{aspect}.Rating")
        if "overall_score" in completion:
            ratings["overall"] = parse_number(completion["overall_score"], f"{where}.overall_score")
        records.append(
            RatingRecord(
                id=f"{base_id}/{index}",
                prompt=fields.get("instruction"),
                response=completion.get("response"),
                ratings=ratings,
                category=fields.get("source") if isinstance(fields.get("source"), str) else None,
                metadata={"model": completion.get("model"), "prompt_id": str(base_id)},
            )
        )
    return records


def _has(fields: dict[str, Any], *names: str) -> bool:
    return all(name in fields for name in names)


def _looks_hh(fields: dict[str, Any]) -> bool:
    chosen = fields.get("chosen")
    return (
        _has(fields, "chosen", "rejected")
        and "prompt" not in fields
        and isinstance(chosen, str)
        and "\n\nHuman:" in chosen
        and "\n\nAssistant:" in chosen
    )


def _looks_canonical(fields: dict[str, Any]) -> bool:
    return fields.get("kind") in RECORD_TYPES and fields.get("schema_version") == SCHEMA_VERSION


NAMED_LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    NAMED_LAYOUTS[layout.name] = layout
    return layout


register(
    Layout(
        "prefkit",
        "prefkit's canonical records (kind + schema_version)",
        _looks_canonical,
        _canonical,
    )
)
register(
    Layout(
        "hh-rlhf",
        "Anthropic HH: chosen/rejected transcripts with Human/Assistant turns",
        _looks_hh,
        _hh_rlhf,
    )
)
register(
    Layout(
        "helpsteer2-preference",
        "HelpSteer2-Preference: prompt, response_1, response_2, preference_strength",
        lambda f: _has(f, "prompt", "response_1", "response_2", "preference_strength"),
        _helpsteer2_preference,
    )
)
register(
    Layout(
        "helpsteer",
        "HelpSteer: prompt, response and five attribute ratings",
        lambda f: _has(f, "prompt", "response", *HELPSTEER_ATTRIBUTES),
        _helpsteer,
    )
)
register(
    Layout(
        "ultrafeedback",
        "UltraFeedback: instruction and completions with per-aspect ratings",
        lambda f: _has(f, "instruction", "completions"),
        _ultrafeedback,
    )
)
register(
    Layout(
        "trl-unpaired",
        "TRL unpaired preference: prompt, completion, label",
        lambda f: _has(f, "prompt", "completion", "label"),
        _trl_unpaired,
    )
)
register(
    Layout(
        "trl",
        "TRL preference: prompt/chosen/rejected (standard or conversational) or implicit prompt",
        lambda f: _has(f, "chosen", "rejected"),
        _trl_pair,
    )
)

MAPPING_PRESETS: dict[
    str, tuple[str, dict[str, str], str | None, Callable[[dict[str, Any]], bool]]
] = {
    "pandalm": (
        "PandaLM test set: instruction+input, response1/2, three annotators (1, 2, 0 = tie)",
        {
            "id": "idx",
            "prompt": "instruction+input",
            "response_a": "response1",
            "response_b": "response2",
            "votes": "annotator1+annotator2+annotator3",
            "category": "motivation_app",
        },
        "a=1,b=2,tie=0",
        lambda f: _has(f, "instruction", "input", "response1", "response2", "annotator1"),
    ),
    "ukp-convarg": (
        "UKPConvArg1Strict: id, label (a1/a2), a1, a2; the file name is the topic",
        {
            "id": "id",
            "response_a": "a1",
            "response_b": "a2",
            "winner": "label",
            "category": FILE_FIELD,
        },
        "a=a1,b=a2",
        lambda f: _has(f, "id", "label", "a1", "a2"),
    ),
    "usr": (
        "USR Topical-Chat ratings: source (dialogue), system_output, scores",
        {
            "prompt": "source",
            "response": "system_output",
            "ratings": "scores",
            "category": "system_id",
        },
        None,
        lambda f: _has(f, "system_output", "scores", "source"),
    ),
}


def _preset_layout(name: str) -> Layout:
    description, mapping, winners, detect = MAPPING_PRESETS[name]
    mapped = MappingLayout(mapping, winners, name=name, description=description)

    def convert(row: RawRow) -> list[AnyRecord]:
        if FILE_FIELD in mapping.values() and FILE_FIELD not in (row.fields or {}):
            stem = row.source.rsplit("/", 1)[-1].split(".", 1)[0]
            row.fields = {**(row.fields or {}), FILE_FIELD: stem}
        return mapped.convert(row)

    return Layout(name, description, detect, convert)


for _name in MAPPING_PRESETS:
    register(_preset_layout(_name))

DETECTION_ORDER = (
    "prefkit",
    "hh-rlhf",
    "helpsteer2-preference",
    "helpsteer",
    "ultrafeedback",
    "pandalm",
    "ukp-convarg",
    "usr",
    "trl-unpaired",
    "trl",
)


def detect_layout(fields: dict[str, Any]) -> Layout | None:
    """The first named layout whose signature matches ``fields``; else the canonical
    layout when every field is a canonical name (:data:`PREFKIT_BY_NAMES`)."""
    for name in DETECTION_ORDER:
        layout = NAMED_LAYOUTS[name]
        if layout.detect(fields):
            return layout
    # Last, so that it never takes a row that a named layout recognises.
    if PREFKIT_BY_NAMES.detect(fields):
        return PREFKIT_BY_NAMES
    return None
