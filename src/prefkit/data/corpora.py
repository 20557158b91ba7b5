"""Readers for multi-file collections whose records span rows or files.

Some published data sets are not one row per record: a ranking is spread over
many rows (one per system) or joined from several files. Each reader here
recognises its folder by its file names and yields canonical records directly.

- ``wmt-mqm``: WMT MQM per-segment scores (``*.avg_seg_scores.tsv``) joined with
  the source and target texts of ``*.tsv``; one ranking per segment, systems as
  responses, the MQM score (higher is better) as the score.
- ``cranfield``: the Cranfield collection (``cran.qry``, ``cran.all.1400``,
  ``cranqrel``); one graded ranking per query over its judged documents.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefkit.data.errors import DataError
from prefkit.data.layouts import parse_number
from prefkit.data.records import FieldError, RankingRecord


@dataclass
class Collection:
    """A folder-level reader: its name, how to find it, how to read it."""

    name: str
    description: str

    def matches(self, path: Path) -> bool:
        raise NotImplementedError

    def read(self, path: Path, dropped: Counter) -> Iterator[RankingRecord]:
        """Yield records; count deliberately skipped units in ``dropped`` by reason."""
        raise NotImplementedError


_MARKUP = re.compile(r"</?v>")


class WmtMqm(Collection):
    def __init__(self) -> None:
        super().__init__(
            "wmt-mqm", "WMT MQM segment scores with texts: one ranking of systems per segment"
        )

    def _files(self, path: Path) -> tuple[Path, Path | None] | None:
        folder = path if path.is_dir() else path.parent
        scores = sorted(folder.glob("*.avg_seg_scores.tsv"))
        if path.is_file():
            if not path.name.endswith(".avg_seg_scores.tsv"):
                return None
            scores = [path]
        if len(scores) != 1:
            return None
        texts = folder / scores[0].name.replace(".avg_seg_scores.tsv", ".tsv")
        return scores[0], texts if texts.is_file() else None

    def matches(self, path: Path) -> bool:
        return self._files(path) is not None

    def read(self, path: Path, dropped: Counter) -> Iterator[RankingRecord]:
        files = self._files(path)
        assert files is not None
        scores_file, texts_file = files
        if texts_file is None:
            raise DataError(
                str(scores_file),
                None,
                None,
                "the segment texts file is missing (expected "
                f"{scores_file.name.replace('.avg_seg_scores.tsv', '.tsv')} beside it)",
                reason="missing_file",
            )
        sources: dict[str, str] = {}
        targets: dict[tuple[str, str], str] = {}
        with open(texts_file, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            column = {name: index for index, name in enumerate(header)}
            for needed in ("system", "seg_id", "source", "target"):
                if needed not in column:
                    raise DataError(
                        str(texts_file),
                        1,
                        needed,
                        f"expected a column {needed!r} in the header",
                        reason="bad_header",
                    )
            for values in reader:
                if len(values) != len(header):
                    raise DataError(
                        str(texts_file),
                        reader.line_num,
                        None,
                        f"expected {len(header)} columns, found {len(values)}",
                        reason="wrong_columns",
                    )
                segment = values[column["seg_id"]]
                sources.setdefault(segment, values[column["source"]])
                targets.setdefault(
                    (values[column["system"]], segment), _MARKUP.sub("", values[column["target"]])
                )
        segments: dict[str, list[tuple[str, float | None, int]]] = {}
        with open(scores_file, encoding="utf-8") as handle:
            header = handle.readline().split()
            if header[:3] != ["system", "mqm_avg_score", "seg_id"]:
                raise DataError(
                    str(scores_file),
                    1,
                    None,
                    "expected the header 'system mqm_avg_score seg_id', "
                    f"found {' '.join(header)!r}",
                    reason="bad_header",
                )
            for number, line in enumerate(handle, start=2):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 3:
                    raise DataError(
                        str(scores_file),
                        number,
                        None,
                        f"expected 3 whitespace-separated values, found {len(parts)}",
                        reason="wrong_columns",
                    )
                system, score, segment = parts
                try:
                    value = parse_number(score, "mqm_avg_score")
                except FieldError as error:
                    raise DataError(
                        str(scores_file), number, "mqm_avg_score", str(error), reason=error.reason
                    ) from None
                segments.setdefault(segment, []).append((system, value, number))
        for segment in sorted(segments, key=lambda s: (len(s), s)):
            entries = segments[segment]
            responses, ids, values = [], [], []
            for system, value, _ in entries:
                text = targets.get((system, segment))
                if text is None and "-" in system:
                    # The reference is 'ref-A' in the scores and 'ref' in the texts.
                    text = targets.get((system.rsplit("-", 1)[0], segment))
                if text is None:
                    continue
                responses.append(text)
                ids.append(system)
                values.append(value)
            if segment not in sources or len(responses) < 2:
                dropped["segment with no texts (not rated by any system)"] += 1
                continue
            if len(responses) < len(entries):
                dropped["system output with no text"] += len(entries) - len(responses)
            yield RankingRecord(
                id=f"seg-{segment}",
                prompt=sources[segment],
                responses=tuple(responses),
                scores=tuple(values),
                response_ids=tuple(ids),
                metadata={"seg_id": int(segment)},
            )


def _cranfield_records(path: Path) -> dict[str, dict[str, str]]:
    """``.I``-delimited records -> {id: {tag: text}}, CRLF tolerated."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, list[str]] | None = None
    tag = None
    order: list[str] = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.startswith(".I"):
                identifier = line[2:].strip()
                current = {}
                records[identifier] = current  # type: ignore[assignment]
                order.append(identifier)
                tag = None
            elif len(line) == 2 and line.startswith(".") and line[1] in "TABW":
                tag = line[1]
                assert current is not None
                current.setdefault(tag, [])
            elif current is not None and tag is not None:
                current[tag].append(line)
    return {
        key: {tag: " ".join(" ".join(lines).split()) for tag, lines in value.items()}  # type: ignore[attr-defined]
        for key, value in records.items()
    }


class Cranfield(Collection):
    """Cranfield: grade 1 = most relevant ... 4 = least relevant.

    Scores are graded relevance gains ``5 - grade`` (higher is better, 4 = most
    relevant). Only judged documents enter a query's ranking. The collection
    also holds exactly one judgment graded ``-1`` per query (225 in all); the
    code is not defined by the collection, and the document it marks is
    usually the paper the question was written from (a lexical scorer ranks it
    first for about half the queries), so reading it as "not relevant" would
    punish the scorers that find it. Those judgments are dropped and counted. The ``qid`` of ``cranqrel`` is the query's position (1..225)
    in ``cran.qry``, not its ``.I`` number.
    """

    def __init__(self) -> None:
        super().__init__(
            "cranfield", "Cranfield retrieval collection: one graded ranking per query"
        )

    def matches(self, path: Path) -> bool:
        return path.is_dir() and all(
            (path / name).is_file() for name in ("cran.qry", "cran.all.1400", "cranqrel")
        )

    def read(self, path: Path, dropped: Counter) -> Iterator[RankingRecord]:
        queries = _cranfield_records(path / "cran.qry")
        documents = _cranfield_records(path / "cran.all.1400")
        query_ids = list(queries)
        judged: dict[int, list[tuple[str, int]]] = {}
        with open(path / "cranqrel", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 3:
                    raise DataError(
                        str(path / "cranqrel"),
                        number,
                        None,
                        f"expected 'qid docid grade', found {line.strip()!r}",
                        reason="wrong_columns",
                    )
                position, document, grade = int(parts[0]), parts[1], int(parts[2])
                if not 1 <= position <= len(query_ids):
                    raise DataError(
                        str(path / "cranqrel"),
                        number,
                        "qid",
                        f"expected a query position 1..{len(query_ids)}, found {position}",
                        reason="unknown_value",
                    )
                if document not in documents:
                    raise DataError(
                        str(path / "cranqrel"),
                        number,
                        "docid",
                        f"expected a document id of cran.all.1400, found {document}",
                        reason="unknown_value",
                    )
                judged.setdefault(position, []).append((document, grade))
        for position, query_id in enumerate(query_ids, start=1):
            judgments = judged.get(position, [])
            if len(judgments) < 2:
                dropped["query with fewer than two judged documents"] += 1
                continue
            with_text = []
            for document, grade in judgments:
                if grade == -1:
                    dropped["judgment graded -1 (undefined in the collection)"] += 1
                    continue
                text = documents[document].get("W") or documents[document].get("T")
                if text:
                    with_text.append((document, grade, text))
                else:
                    dropped["judged document with no text"] += 1
            if len(with_text) < 2:
                dropped["query with fewer than two judged documents"] += 1
                continue
            yield RankingRecord(
                id=f"q{position}",
                prompt=queries[query_id].get("W", ""),
                responses=tuple(text for _, _, text in with_text),
                scores=tuple(float(5 - grade) for _, grade, _ in with_text),
                response_ids=tuple(document for document, _, _ in with_text),
                metadata={"query_number": query_id, "grades": [grade for _, grade, _ in with_text]},
            )


COLLECTIONS: dict[str, Collection] = {
    collection.name: collection for collection in (WmtMqm(), Cranfield())
}


def detect_collection(path: Path) -> Collection | None:
    for collection in COLLECTIONS.values():
        if collection.matches(path):
            return collection
    return None
