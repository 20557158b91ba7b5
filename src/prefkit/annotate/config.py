"""Settings of an annotation project and of the annotation server.

:class:`ProjectConfig` is stored with the project (as JSON) and generates the
options of ``prefkit annotate create``; :class:`ServeConfig` generates those of
``prefkit annotate serve``. Both validate themselves on construction.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefkit.errors import UserInputError

TASKS = ("pairwise", "ranking", "rating", "binary")
Task = Literal["pairwise", "ranking", "rating", "binary"]

PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ANNOTATOR_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")


class AnnotateError(UserInputError):
    """A problem with an annotation command's input that the user can fix."""


@dataclass(frozen=True)
class RatingAttribute:
    """One attribute a rating project asks for, on an integer scale."""

    name: str
    """Attribute name, e.g. ``helpfulness`` (the key in the exported ``ratings``)."""
    minimum: int = 1
    """Lowest value of the scale."""
    maximum: int = 5
    """Highest value of the scale."""
    description: str = ""
    """Shown to the annotator beside the attribute."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise AnnotateError(
                f"rating attribute name {self.name!r}: expected 1-64 letters, digits, '_', '.' or '-'"
            )
        for bound in ("minimum", "maximum"):
            value = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AnnotateError(
                    f"rating attribute {self.name!r}: {bound} must be an integer, found {value!r}"
                )
        if not self.minimum < self.maximum or self.maximum - self.minimum > 100:
            raise AnnotateError(
                f"rating attribute {self.name!r}: expected minimum < maximum and at most 101 "
                f"values, found {self.minimum}..{self.maximum}"
            )
        if not isinstance(self.description, str) or len(self.description) > 2000:
            raise AnnotateError(
                f"rating attribute {self.name!r}: description must be text of at most 2000 characters"
            )

    @property
    def values(self) -> range:
        return range(self.minimum, self.maximum + 1)


def parse_attribute(spec: str) -> RatingAttribute:
    """``NAME=MIN..MAX`` (e.g. ``helpfulness=1..5``); ``NAME`` alone means 1..5."""
    name, _, scale = spec.partition("=")
    if not scale:
        return RatingAttribute(name.strip())
    match = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", scale)
    if not match:
        raise AnnotateError(f"--attribute {spec!r}: expected NAME=MIN..MAX, e.g. helpfulness=1..5")
    return RatingAttribute(name.strip(), int(match.group(1)), int(match.group(2)))


def read_attributes_file(path: str | Path) -> tuple[RatingAttribute, ...]:
    """A JSON list of ``{"name", "minimum", "maximum", "description"}`` objects."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotateError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise AnnotateError(f"{path}: expected a non-empty JSON list of attributes")
    attributes = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise AnnotateError(f"{path}: attribute [{index}]: expected an object with a 'name'")
        unknown = set(entry) - {"name", "minimum", "maximum", "description"}
        if unknown:
            raise AnnotateError(
                f"{path}: attribute [{index}]: unknown key {sorted(unknown)[0]!r} "
                "(expected name, minimum, maximum, description)"
            )
        try:
            attributes.append(RatingAttribute(**entry))
        except AnnotateError as error:
            raise AnnotateError(f"{path}: attribute [{index}]: {error}") from None
    return tuple(attributes)


@dataclass(frozen=True)
class ProjectConfig:
    """How a project is labelled: the task, the overlap, the order, gold items, flags."""

    task: Task = "pairwise"
    """pairwise: A / B / tie with optional strength; ranking: order N responses (ties
    allowed); rating: the project's attributes; binary: thumbs up or down."""
    overlap: int = 1
    """How many distinct annotators label each item."""
    priority: Literal["random", "uncertainty"] = "random"
    """The order items are offered in: random (seeded), or uncertainty: items whose
    reward-model margin is closest to zero first (needs --reward)."""
    seed: int = 0
    """Seed of the item order, the left/right order and the gold mix."""
    lease_minutes: float = 30.0
    """How long an item stays reserved for the annotator it was given to; after that it
    goes back to the pool (an answer sent later is still kept while a slot is free)."""
    gold_every: int = 10
    """With gold items, one of every N items an annotator gets is a gold item."""
    level: Literal["ordinal", "interval"] = "ordinal"
    """Rating projects: the level of measurement for Krippendorff's alpha."""
    flag_below: float = 0.6
    """Flag annotators whose agreement with the others (once they share at least 5
    answers with others) or accuracy on gold items (once they answered 3) is below this."""
    attributes: tuple[RatingAttribute, ...] = field(default_factory=tuple)
    """Rating projects: the attributes asked for (from --attribute or --attributes)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise AnnotateError(f"task must be one of {', '.join(TASKS)}, found {self.task!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 1:
            raise AnnotateError(f"overlap must be an integer >= 1, found {self.overlap!r}")
        if self.overlap > 1000:
            raise AnnotateError(f"overlap must be at most 1000, found {self.overlap}")
        if self.priority not in ("random", "uncertainty"):
            raise AnnotateError(
                f"priority must be 'random' or 'uncertainty', found {self.priority!r}"
            )
        if self.task == "rating" and self.priority == "uncertainty":
            raise AnnotateError(
                "priority 'uncertainty' needs a margin: use it with pairwise, ranking or "
                "binary projects"
            )
        if not 0.0 < float(self.lease_minutes) <= 7 * 24 * 60:
            raise AnnotateError(
                f"lease_minutes must be in (0, 10080], found {self.lease_minutes!r}"
            )
        if isinstance(self.gold_every, bool) or not isinstance(self.gold_every, int):
            raise AnnotateError(f"gold_every must be an integer, found {self.gold_every!r}")
        if self.gold_every < 2:
            raise AnnotateError(f"gold_every must be >= 2, found {self.gold_every}")
        if self.level not in ("ordinal", "interval"):
            raise AnnotateError(f"level must be 'ordinal' or 'interval', found {self.level!r}")
        if not 0.0 <= float(self.flag_below) <= 1.0:
            raise AnnotateError(f"flag_below must be in [0, 1], found {self.flag_below!r}")
        attributes = tuple(
            a if isinstance(a, RatingAttribute) else RatingAttribute(**a) for a in self.attributes
        )
        object.__setattr__(self, "attributes", attributes)
        if self.task == "rating" and not attributes:
            raise AnnotateError(
                "a rating project needs its attributes: --attribute helpfulness=1..5 "
                "(repeatable) or --attributes FILE.json"
            )
        if self.task != "rating" and attributes:
            raise AnnotateError(f"attributes are for rating projects, not {self.task}")
        names = [a.name for a in attributes]
        if len(set(names)) != len(names):
            raise AnnotateError(f"rating attributes must have distinct names, found {names}")

    @property
    def lease_seconds(self) -> float:
        return float(self.lease_minutes) * 60.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectConfig:
        return cls(**data)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``prefkit annotate serve``."""

    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1 = this machine only; 0.0.0.0 for a team behind TLS)."""
    port: int = 8080
    """Port to listen on (0 picks a free one; the address is printed)."""
    session_hours: float = 12.0
    """How long a login lasts."""
    login_failures_per_minute: int = 5
    """Failed logins allowed per client address per minute; more are refused (HTTP 429)."""
    max_body_kib: int = 64
    """Largest request body accepted, in KiB (HTTP 413 above it)."""
    max_rationale_chars: int = 5000
    """Longest rationale accepted."""
    secure_cookies: bool = False
    """Mark cookies Secure (only sent over HTTPS): turn on when served behind TLS."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise AnnotateError(f"port must be in 0..65535, found {self.port}")
        if self.session_hours <= 0:
            raise AnnotateError(f"session_hours must be > 0, found {self.session_hours}")
        if self.login_failures_per_minute < 1:
            raise AnnotateError(
                f"login_failures_per_minute must be >= 1, found {self.login_failures_per_minute}"
            )
        if not 1 <= self.max_body_kib <= 10_240:
            raise AnnotateError(f"max_body_kib must be in 1..10240, found {self.max_body_kib}")
        if self.max_rationale_chars < 0:
            raise AnnotateError(
                f"max_rationale_chars must be >= 0, found {self.max_rationale_chars}"
            )


def check_project_name(name: str) -> str:
    if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name):
        raise AnnotateError(
            f"project name {name!r}: expected 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def check_annotator_name(name: str) -> str:
    if not isinstance(name, str) or not ANNOTATOR_NAME.fullmatch(name) or not name.strip():
        raise AnnotateError(
            f"annotator name {name!r}: expected 1-100 printable characters (no control characters)"
        )
    return name
