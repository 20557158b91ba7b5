"""The canonical data model: one record kind per kind of feedback.

Four kinds cover the feedback people collect:

- :class:`PairwiseRecord`: a prompt, two responses and which one is better
  (``a``, ``b`` or ``tie``), with optional preference strength, per-annotator
  votes (kept, never collapsed), margin, soft label and weight.
- :class:`RankingRecord`: a prompt and N responses with scores or ranks (ties and
  missing values allowed).
- :class:`RatingRecord`: a prompt, one response and named numeric attributes
  (missing allowed).
- :class:`BinaryRecord`: a prompt, one response and a good/bad label (thumbs).

A text is either a plain string or a conversation: a tuple of :class:`Message`
(``role`` in ``system``/``user``/``assistant``/``tool``, ``content`` a string).
Every record has an ``id``, an optional ``category`` and free ``metadata``.

Records accept empty responses (a model can answer with nothing); readers
keep and count them unless ``reject_empty_responses``. Records validate
themselves on construction and raise :class:`FieldError`
naming the field, what was expected and what was found; readers add the file
and line. ``to_dict`` / :func:`record_from_dict` round-trip losslessly through
JSON (``schema_version`` and ``kind`` are written on every record).

This module is pure Python: it imports nothing outside the standard library.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from prefkit.errors import UserInputError

SCHEMA_VERSION = 1

ROLES = ("system", "user", "assistant", "tool")
OUTCOMES = ("a", "b", "tie")

Outcome = Literal["a", "b", "tie"]


class FieldError(UserInputError):
    """A record field holds a value that the data model does not accept.

    Attributes:
        field: dotted name of the offending field (``response_a``, ``votes[2]``).
        expected: what the field must hold.
        found: a short description of what it holds.
    """

    def __init__(self, field: str, expected: str, found: Any, reason: str | None = None):
        self.field = field
        self.expected = expected
        self.found = describe_value(found)
        self.reason = reason or _reason_for(expected, found)
        super().__init__(f"field '{field}': expected {expected}, found {self.found}")


def _reason_for(expected: str, found: Any) -> str:
    """A short category for counting rejects, inferred from the failed expectation."""
    if found is None and "required" in expected:
        return "missing_field"
    if isinstance(found, str) and not found.strip() and "non-empty" in expected:
        return "empty_text"
    if "number" in expected and isinstance(found, str):
        return "non_numeric"
    if "one of" in expected or "'a'" in expected:
        return "unknown_value"
    if "different from" in expected:
        return "identical_responses"
    return "wrong_type"


def describe_value(value: Any, limit: int = 60) -> str:
    """A short, printable description of ``value`` for error messages."""
    if isinstance(value, str):
        if value == "":
            return "an empty string"
        if not value.strip():
            return "a string of only whitespace"
        shown = value if len(value) <= limit else value[:limit] + "..."
        return f"{type(value).__name__} {shown!r}" + (
            f" ({len(value):,} characters)" if len(value) > limit else ""
        )
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(value).__name__} {text}"


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """``system``, ``user``, ``assistant`` or ``tool``."""
    content: str
    """The turn's text."""

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Text = str | tuple[Message, ...]
"""A prompt or response: a plain string or a conversation."""


def parse_text(value: Any, field: str, *, allow_empty: bool = False) -> Text:
    """Validate a text field and return it in canonical form.

    Accepts a string, or a list of ``{"role", "content"}`` mappings (or
    :class:`Message`) for a conversation. Raises :class:`FieldError` on a wrong
    type, an empty text (unless ``allow_empty``), or a bad role.
    """
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise FieldError(field, "a non-empty text", value)
        return value
    if isinstance(value, (list, tuple)) and not isinstance(value, str):
        if not value:
            if allow_empty:
                return ""
            raise FieldError(field, "a non-empty conversation", value)
        messages = []
        for index, turn in enumerate(value):
            where = f"{field}[{index}]"
            if isinstance(turn, Message):
                role, content = turn.role, turn.content
            elif isinstance(turn, dict):
                if set(turn) - {"role", "content"} or "role" not in turn or "content" not in turn:
                    raise FieldError(
                        where, "a message with exactly the keys 'role' and 'content'", turn
                    )
                role, content = turn["role"], turn["content"]
            else:
                raise FieldError(where, "a message {'role': ..., 'content': ...}", turn)
            if role not in ROLES:
                raise FieldError(f"{where}.role", f"one of {', '.join(ROLES)}", role, "bad_role")
            if not isinstance(content, str):
                raise FieldError(f"{where}.content", "a string", content)
            messages.append(Message(role, content))
        return tuple(messages)
    raise FieldError(field, "a text (string) or a conversation (list of messages)", value)


def text_to_json(text: Text) -> str | list[dict[str, str]]:
    """The JSON form of a text: the string itself or a list of message dicts."""
    if isinstance(text, str):
        return text
    return [message.to_dict() for message in text]


def text_key(text: Text) -> str:
    """A string that identifies a text exactly (used for hashing and duplicates)."""
    if isinstance(text, str):
        return text
    return json.dumps(text_to_json(text), ensure_ascii=False, separators=(",", ":"))


def render_text(text: Text) -> str:
    """A readable plain-text rendering (``role: content`` per turn for conversations)."""
    if isinstance(text, str):
        return text
    return "\n\n".join(f"{message.role}: {message.content}" for message in text)


def text_length(text: Text) -> int:
    """Length in characters of the text's content (sum over turns)."""
    if isinstance(text, str):
        return len(text)
    return sum(len(message.content) for message in text)


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(field, "a string", value)
    return str(value)


def _optional_number(value: Any, field: str, *, minimum: float | None = None) -> float | None:
    if value is None:
        return None
    number = _number(value, field)
    if number is None:
        return None
    if minimum is not None and number < minimum:
        raise FieldError(field, f"a number >= {minimum:g}", value)
    return number


def _number(value: Any, field: str) -> float | None:
    """A finite float, or ``None`` for a missing value (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, "a number", value)
    number = float(value)
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise FieldError(field, "a finite number", value)
    return number


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError("metadata", "a mapping", value)
    return dict(value)


def majority_outcome(votes: tuple[Outcome | None, ...], *, split: str = "tie") -> Outcome | None:
    """The plurality of the votes; ``None`` when no annotator voted.

    A vote for ``tie`` counts like any other. When the top count is shared
    (for example one vote ``a`` and one ``b``), ``split`` decides: ``"tie"``
    (the default) returns ``tie``; ``"none"`` returns ``None``.
    """
    counts = Counter(vote for vote in votes if vote is not None)
    if not counts:
        return None
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        if split == "tie":
            return "tie"
        if split == "none":
            return None
        raise ValueError(f"split must be 'tie' or 'none', got {split!r}")
    return ranked[0][0]


class Record:
    """Behaviour shared by every record kind."""

    kind: ClassVar[str]
    _text_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; :func:`record_from_dict` reads it back exactly."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": self.kind}
        for name in (item.name for item in fields(self)):  # type: ignore[arg-type]
            value = getattr(self, name)
            if name in self._text_fields:
                value = text_to_json(value)
            elif name == "responses":
                value = [text_to_json(response) for response in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    def texts(self) -> list[Text]:
        """Every text of the record: the prompt first, then the responses."""
        raise NotImplementedError

    def named_responses(self) -> list[tuple[str, Text]]:
        """Each response with its field name (``response_a``, ``responses[2]``, ...)."""
        raise NotImplementedError


@dataclass(frozen=True)
class PairwiseRecord(Record):
    """Two responses to one prompt and which is better.

    When ``outcome`` is not given it is the plurality of ``votes`` (an even
    split is a tie); the votes themselves are kept as they are.
    """

    kind: ClassVar[str] = "pairwise"
    _text_fields: ClassVar[tuple[str, ...]] = ("prompt", "response_a", "response_b")

    id: str
    """Stable identifier of the record."""
    prompt: Text
    """The prompt (may be empty, for example in implicit-prompt data)."""
    response_a: Text
    """The first response."""
    response_b: Text
    """The second response."""
    outcome: Outcome | None = None
    """``a`` or ``b`` (that response is better) or ``tie``; derived from votes when missing."""
    strength: float | None = None
    """Preference strength (>= 0), e.g. HelpSteer2's 1..3; scales a Bradley-Terry loss."""
    votes: tuple[Outcome | None, ...] | None = None
    """Per-annotator votes (``a``/``b``/``tie``; ``None`` = that annotator did not vote)."""
    margin: float | None = None
    """A target margin between the two rewards (Llama 2 style)."""
    soft_label: float | None = None
    """Probability in [0, 1] that ``a`` is preferred (for example the vote fraction)."""
    weight: float | None = None
    """Sample weight (>= 0); ``None`` means 1."""
    category: str | None = None
    """Optional group (topic, subset) used for breakdowns and splits."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free metadata, kept as it is."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "id", _require_id(self.id))
        set_(self, "prompt", parse_text(self.prompt, "prompt", allow_empty=True))
        set_(self, "response_a", parse_text(self.response_a, "response_a", allow_empty=True))
        set_(self, "response_b", parse_text(self.response_b, "response_b", allow_empty=True))
        if self.votes is not None:
            if isinstance(self.votes, (str, bytes)) or not isinstance(self.votes, (list, tuple)):
                raise FieldError("votes", "a list of votes", self.votes)
            votes = []
            for index, vote in enumerate(self.votes):
                if vote is not None and vote not in OUTCOMES:
                    raise FieldError(f"votes[{index}]", "'a', 'b', 'tie' or null", vote)
                votes.append(vote)
            set_(self, "votes", tuple(votes))
        if self.outcome is None and self.votes:
            set_(self, "outcome", majority_outcome(self.votes))
        if self.outcome is None:
            raise FieldError("outcome", "'a', 'b' or 'tie' (or annotator votes)", self.outcome)
        if self.outcome not in OUTCOMES:
            raise FieldError("outcome", "'a', 'b' or 'tie'", self.outcome)
        if self.outcome != "tie" and text_key(self.response_a) == text_key(self.response_b):
            raise FieldError(
                "response_b",
                f"a response different from response_a (outcome {self.outcome!r})",
                self.response_b,
                "identical_responses",
            )
        set_(self, "strength", _optional_number(self.strength, "strength", minimum=0.0))
        set_(self, "margin", _optional_number(self.margin, "margin"))
        set_(self, "weight", _optional_number(self.weight, "weight", minimum=0.0))
        soft = _optional_number(self.soft_label, "soft_label", minimum=0.0)
        if soft is not None and soft > 1.0:
            raise FieldError("soft_label", "a probability in [0, 1]", self.soft_label)
        set_(self, "soft_label", soft)
        set_(self, "category", _optional_str(self.category, "category"))
        set_(self, "metadata", _metadata(self.metadata))

    @classmethod
    def trusted(
        cls,
        id: str,
        prompt: Text,
        response_a: Text,
        response_b: Text,
        outcome: Outcome,
        strength: float | None,
        margin: float | None,
        soft_label: float | None,
        weight: float | None,
        category: str | None,
        metadata: dict[str, Any],
    ) -> PairwiseRecord:
        """A record (without votes) from values that are already in canonical form and
        valid; no check runs. For readers that validated a whole block at once."""
        record = object.__new__(cls)
        record.__dict__.update(
            id=id,
            prompt=prompt,
            response_a=response_a,
            response_b=response_b,
            outcome=outcome,
            strength=strength,
            votes=None,
            margin=margin,
            soft_label=soft_label,
            weight=weight,
            category=category,
            metadata=metadata,
        )
        return record

    @property
    def is_tie(self) -> bool:
        return self.outcome == "tie"

    @property
    def chosen(self) -> Text:
        """The preferred response; a tie has none."""
        if self.outcome == "tie":
            raise ValueError(f"record {self.id!r} is a tie: it has no chosen response")
        return self.response_a if self.outcome == "a" else self.response_b

    @property
    def rejected(self) -> Text:
        """The other response; a tie has none."""
        if self.outcome == "tie":
            raise ValueError(f"record {self.id!r} is a tie: it has no rejected response")
        return self.response_b if self.outcome == "a" else self.response_a

    def texts(self) -> list[Text]:
        return [self.prompt, self.response_a, self.response_b]

    def named_responses(self) -> list[tuple[str, Text]]:
        return [("response_a", self.response_a), ("response_b", self.response_b)]


@dataclass(frozen=True)
class RankingRecord(Record):
    """N responses to one prompt with scores (higher is better) or ranks (1 is best)."""

    kind: ClassVar[str] = "ranking"
    _text_fields: ClassVar[tuple[str, ...]] = ("prompt",)

    id: str
    """Stable identifier of the record."""
    prompt: Text
    """The prompt (or query)."""
    responses: tuple[Text, ...]
    """The responses (or documents)."""
    scores: tuple[float | None, ...] | None = None
    """One score per response, higher is better; ``None`` = not rated."""
    ranks: tuple[float | None, ...] | None = None
    """One rank per response, 1 is best, equal ranks are ties; ``None`` = not ranked."""
    response_ids: tuple[str, ...] | None = None
    """Optional identifier per response (system name, document id)."""
    category: str | None = None
    """Optional group used for breakdowns and splits."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free metadata, kept as it is."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "id", _require_id(self.id))
        set_(self, "prompt", parse_text(self.prompt, "prompt", allow_empty=True))
        if isinstance(self.responses, (str, bytes)) or not isinstance(
            self.responses, (list, tuple)
        ):
            raise FieldError("responses", "a list of responses", self.responses)
        if len(self.responses) < 2:
            raise FieldError("responses", "at least two responses", self.responses)
        responses = tuple(
            parse_text(response, f"responses[{index}]", allow_empty=True)
            for index, response in enumerate(self.responses)
        )
        set_(self, "responses", responses)
        if (self.scores is None) == (self.ranks is None):
            raise FieldError("scores", "either scores or ranks (exactly one of them)", self.scores)
        for name in ("scores", "ranks"):
            values = getattr(self, name)
            if values is None:
                continue
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
                raise FieldError(name, "a list of numbers", values)
            if len(values) != len(responses):
                raise FieldError(name, f"{len(responses)} values (one per response)", values)
            parsed = tuple(_number(value, f"{name}[{i}]") for i, value in enumerate(values))
            if name == "ranks" and any(rank is not None and rank < 1 for rank in parsed):
                raise FieldError("ranks", "ranks >= 1 (1 is best)", values)
            set_(self, name, parsed)
        if self.response_ids is not None:
            ids = tuple(str(value) for value in self.response_ids)
            if len(ids) != len(responses):
                raise FieldError(
                    "response_ids", f"{len(responses)} ids (one per response)", self.response_ids
                )
            set_(self, "response_ids", ids)
        set_(self, "category", _optional_str(self.category, "category"))
        set_(self, "metadata", _metadata(self.metadata))

    def preference_scores(self) -> list[float | None]:
        """Scores where higher is better: the scores, or minus the ranks."""
        if self.scores is not None:
            return list(self.scores)
        return [None if rank is None else -rank for rank in self.ranks]  # type: ignore[union-attr]

    def texts(self) -> list[Text]:
        return [self.prompt, *self.responses]

    def named_responses(self) -> list[tuple[str, Text]]:
        return [(f"responses[{index}]", response) for index, response in enumerate(self.responses)]


@dataclass(frozen=True)
class RatingRecord(Record):
    """One response with named numeric attributes (for example HelpSteer's five)."""

    kind: ClassVar[str] = "rating"
    _text_fields: ClassVar[tuple[str, ...]] = ("prompt", "response")

    id: str
    """Stable identifier of the record."""
    prompt: Text
    """The prompt."""
    response: Text
    """The rated response."""
    ratings: dict[str, float | None]
    """Attribute name -> value; ``None`` = not rated."""
    category: str | None = None
    """Optional group used for breakdowns and splits."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free metadata, kept as it is."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "id", _require_id(self.id))
        set_(self, "prompt", parse_text(self.prompt, "prompt", allow_empty=True))
        set_(self, "response", parse_text(self.response, "response", allow_empty=True))
        if not isinstance(self.ratings, dict) or not self.ratings:
            raise FieldError("ratings", "a non-empty mapping of attribute -> number", self.ratings)
        ratings = {}
        for name, value in self.ratings.items():
            if not isinstance(name, str) or not name:
                raise FieldError("ratings", "attribute names that are non-empty strings", name)
            ratings[name] = _number(value, f"ratings.{name}")
        set_(self, "ratings", ratings)
        set_(self, "category", _optional_str(self.category, "category"))
        set_(self, "metadata", _metadata(self.metadata))

    def texts(self) -> list[Text]:
        return [self.prompt, self.response]

    def named_responses(self) -> list[tuple[str, Text]]:
        return [("response", self.response)]


@dataclass(frozen=True)
class BinaryRecord(Record):
    """One response with a good/bad label (thumbs up/down, KTO-style)."""

    kind: ClassVar[str] = "binary"
    _text_fields: ClassVar[tuple[str, ...]] = ("prompt", "response")

    id: str
    """Stable identifier of the record."""
    prompt: Text
    """The prompt."""
    response: Text
    """The labelled response."""
    label: bool
    """``True`` = good (desirable), ``False`` = bad."""
    weight: float | None = None
    """Sample weight (>= 0); ``None`` means 1."""
    category: str | None = None
    """Optional group used for breakdowns and splits."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free metadata, kept as it is."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "id", _require_id(self.id))
        set_(self, "prompt", parse_text(self.prompt, "prompt", allow_empty=True))
        set_(self, "response", parse_text(self.response, "response", allow_empty=True))
        if not isinstance(self.label, bool):
            raise FieldError("label", "a boolean (true = good, false = bad)", self.label)
        set_(self, "weight", _optional_number(self.weight, "weight", minimum=0.0))
        set_(self, "category", _optional_str(self.category, "category"))
        set_(self, "metadata", _metadata(self.metadata))

    def texts(self) -> list[Text]:
        return [self.prompt, self.response]

    def named_responses(self) -> list[tuple[str, Text]]:
        return [("response", self.response)]


AnyRecord = PairwiseRecord | RankingRecord | RatingRecord | BinaryRecord

RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (PairwiseRecord, RankingRecord, RatingRecord, BinaryRecord)
}


def _require_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise FieldError("id", "a non-empty string or integer", value)
    return str(value)


def record_from_dict(data: dict[str, Any]) -> AnyRecord:
    """Build a record from its canonical mapping (the inverse of ``to_dict``)."""
    if not isinstance(data, dict):
        raise FieldError("record", "a JSON object", data)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise FieldError("schema_version", f"{SCHEMA_VERSION}", version)
    kind = data.get("kind")
    if kind not in RECORD_TYPES:
        raise FieldError("kind", f"one of {', '.join(RECORD_TYPES)}", kind)
    cls = RECORD_TYPES[kind]
    names = {item.name for item in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names - {"schema_version", "kind"}
    if unknown:
        raise FieldError(
            sorted(unknown)[0],
            f"a field of a {kind} record ({', '.join(sorted(names))})",
            data[sorted(unknown)[0]],
        )
    try:
        return cls(**{key: value for key, value in data.items() if key in names})  # type: ignore[return-value]
    except TypeError as error:
        missing = [name for name in names if name not in data]
        raise FieldError(
            missing[0] if missing else "record", "a value (required field)", None
        ) from error
