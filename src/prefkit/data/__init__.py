"""The data layer: one canonical model for every kind of feedback.

- :mod:`prefkit.data.records`: the record kinds and their validation.
- :mod:`prefkit.data.read`: reading any supported source into records.
- :mod:`prefkit.data.fastpath`: the reader's fast path for clean pairwise JSONL and Parquet.
- :mod:`prefkit.data.write`: writing records as JSONL or Parquet.
- :mod:`prefkit.data.layouts`: named layouts and ``--map`` mappings.
- :mod:`prefkit.data.convert`: conversions between kinds.
- :mod:`prefkit.data.inspect`: summary statistics of a data set.
"""

from prefkit.data.errors import DataError, Rejects
from prefkit.data.layouts import LayoutError, MappingLayout, parse_map_args
from prefkit.data.read import FeedbackReader, ReadStats, known_formats, load_feedback, read_feedback
from prefkit.data.records import (
    SCHEMA_VERSION,
    AnyRecord,
    BinaryRecord,
    FieldError,
    Message,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    record_from_dict,
)
from prefkit.data.write import write_records

__all__ = [
    "SCHEMA_VERSION",
    "AnyRecord",
    "BinaryRecord",
    "DataError",
    "FeedbackReader",
    "FieldError",
    "LayoutError",
    "MappingLayout",
    "Message",
    "PairwiseRecord",
    "RankingRecord",
    "RatingRecord",
    "ReadStats",
    "Rejects",
    "known_formats",
    "load_feedback",
    "parse_map_args",
    "read_feedback",
    "record_from_dict",
    "write_records",
]
