"""Prompts to generate from: the prompts of any feedback file, or a plain prompt list.

A prompt list (``--format prompts``) is JSONL with one JSON string or one
``{"prompt": ..., "id": ...}`` object per line (``id`` optional: the line number
is used), or a folder of such files (read in sorted order, subfolders included; a
line without an id is then ``FILE:LINE``, the file relative to the folder). Records of any kind give their prompt. Duplicate prompts are
generated once (under the first record's id) and counted; empty prompts are an
error naming the record, or a counted skip with ``on_error="skip"``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prefkit.data.records import FieldError, Text, parse_text, text_key
from prefkit.errors import UserInputError

__all__ = ["PromptItem", "PromptStats", "is_prompt_list", "read_prompt_list", "unique_prompts"]

PROMPT_LIST_KEYS = frozenset({"id", "prompt", "category", "metadata"})


@dataclass(frozen=True)
class PromptItem:
    """One distinct prompt."""

    id: str
    """The id of the first record that holds it."""
    prompt: Text
    """The prompt (a string or a conversation)."""
    category: str | None = None
    """The first record's category."""
    occurrences: int = 1
    """How many input records hold this prompt."""


@dataclass
class PromptStats:
    """Counts of reading prompts: ``records == empty + sum(occurrences)``."""

    records: int = 0
    """Input records (or prompt lines) read."""
    unique: int = 0
    """Distinct prompts kept."""
    duplicates: int = 0
    """Records whose prompt an earlier record already had."""
    empty: int = 0
    """Records with an empty prompt, skipped."""

    def summary(self) -> str:
        return (
            f"{self.records} records -> {self.unique} distinct prompts "
            f"({self.duplicates} duplicates generated once, {self.empty} empty skipped)"
        )


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def prompt_list_files(folder: Path) -> list[Path]:
    """The data files of a folder read as prompt lists (sorted, subfolders included)."""
    from prefkit.data.sources import list_data_files

    files = list_data_files(folder)
    if not files:
        raise UserInputError(f"{folder}: the folder holds no data files")
    for path in files:
        if ".jsonl" not in path.name.lower():
            raise UserInputError(
                f"{path}: a prompt list is JSONL; this folder also holds other files (read "
                "it as feedback data without --format prompts, or keep only .jsonl files)"
            )
    return files


def is_prompt_list(path: str | Path) -> bool:
    """Whether ``path`` is a JSONL file whose first line is a string or a bare ``{"prompt"}``,
    or a folder whose first data file is one."""
    path = Path(path)
    if path.is_dir():
        from prefkit.data.sources import is_hf_dataset_folder, list_data_files

        files = [] if is_hf_dataset_folder(path) else list_data_files(path)
        return bool(files) and is_prompt_list(files[0])
    if not path.is_file() or ".jsonl" not in path.name.lower():
        return False
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return False
            return isinstance(value, str) or (
                isinstance(value, dict) and "prompt" in value and set(value) <= PROMPT_LIST_KEYS
            )
    return False


def read_prompt_list(path: str | Path) -> Iterator[tuple[str, Text, str | None]]:
    """``(id, prompt, category)`` per line of a prompt list (a file, or a folder of files);
    bad lines raise naming the file and line."""
    path = Path(path)
    if path.is_dir():
        for file in prompt_list_files(path):
            yield from _read_prompt_file(file, f"{file.relative_to(path).as_posix()}:")
        return
    yield from _read_prompt_file(path, "")


def _read_prompt_file(path: Path, id_prefix: str) -> Iterator[tuple[str, Text, str | None]]:
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserInputError(f"{where}: not valid JSON ({error.msg})") from None
            if isinstance(value, str):
                yield f"{id_prefix}{line_number}", value, None
                continue
            if not isinstance(value, dict) or "prompt" not in value:
                raise UserInputError(
                    f"{where}: expected a JSON string or an object with a 'prompt' field, "
                    f"found {type(value).__name__}"
                )
            try:
                prompt = parse_text(value["prompt"], "prompt", allow_empty=True)
            except FieldError as error:
                raise UserInputError(f"{where}: {error}") from None
            category = value.get("category")
            yield (
                str(value["id"]) if "id" in value else f"{id_prefix}{line_number}",
                prompt,
                None if category is None else str(category),
            )


def _is_empty(prompt: Text) -> bool:
    if isinstance(prompt, str):
        return not prompt.strip()
    return all(not message.content.strip() for message in prompt)


def unique_prompts(
    items: Iterable[tuple[str, Text, str | None]], *, source: str, on_error: str = "raise"
) -> tuple[list[PromptItem], PromptStats]:
    """Distinct prompts in first-seen order, with counts; empty prompts raise or are skipped."""
    stats = PromptStats()
    first: dict[str, int] = {}
    ids: set[str] = set()
    kept: list[PromptItem] = []
    for record_id, prompt, category in items:
        stats.records += 1
        if _is_empty(prompt):
            if on_error == "skip":
                stats.empty += 1
                continue
            raise UserInputError(
                f"{source}: record {record_id!r}: the prompt is empty; there is nothing to "
                "generate from (remove it, or pass --on-error skip to count and skip it)"
            )
        key = text_key(prompt)
        if key in first:
            index = first[key]
            previous = kept[index]
            kept[index] = PromptItem(
                previous.id, previous.prompt, previous.category, previous.occurrences + 1
            )
            stats.duplicates += 1
            continue
        if record_id in ids:
            raise UserInputError(
                f"{source}: record id {record_id!r} is used by two different prompts; "
                "give every record its own id"
            )
        ids.add(record_id)
        first[key] = len(kept)
        kept.append(PromptItem(record_id, prompt, category))
    stats.unique = len(kept)
    return kept, stats
