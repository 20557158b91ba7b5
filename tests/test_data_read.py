"""Reading: every source format, every named layout, mappings, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import import_or_skip_outside_ci
from prefkit.data import (
    DataError,
    FeedbackReader,
    FieldError,
    LayoutError,
    Message,
    PairwiseRecord,
    RankingRecord,
    load_feedback,
    parse_map_args,
    record_from_dict,
    write_records,
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


PAIR = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


# ----------------------------------------------------------------------------- sources


def test_jsonl_gz_json_list_csv_tsv_parquet_read_the_same(tmp_path: Path) -> None:
    rows = [dict(PAIR, id=str(i), chosen=f"{i}", rejected=f"{i + 1}") for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    header = "id,prompt,chosen,rejected\n"
    (tmp_path / "a.csv").write_text(
        header
        + "".join(f'{r["id"]},"{r["prompt"]}",{r["chosen"]},{r["rejected"]}\n' for r in rows),
        encoding="utf-8",
    )
    (tmp_path / "a.tsv").write_text(
        "#"
        + header.replace(",", "\t")
        + "".join(f"{r['id']}\t{r['prompt']}\t{r['chosen']}\t{r['rejected']}\n" for r in rows),
        encoding="utf-8",
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    expected = [record.to_dict() for record in load_feedback(tmp_path / "a.jsonl")[0]]
    assert [r["response_a"] for r in expected] == ["0", "1", "2", "3", "4"]
    for name in ("a.jsonl.gz", "a.json", "a.csv", "a.tsv", "a.parquet"):
        records, stats = load_feedback(tmp_path / name, format="trl")
        assert [record.to_dict() for record in records] == expected, name
        assert stats.n_records == 5 and stats.rejects.total == 0


def test_folder_adds_file_name_as_field_and_category(tmp_path: Path) -> None:
    folder = tmp_path / "topics"
    folder.mkdir()
    for topic in ("cats", "dogs"):
        (folder / f"{topic}.csv").write_text(
            "#id\tlabel\ta1\ta2\n"
            f"{topic}1\ta1\tgood {topic}\tbad {topic}\n"
            f"{topic}2\ta2\tx {topic}\ty {topic}\n",
            encoding="utf-8",
        )
    records, _ = load_feedback(folder)
    assert [(r.id, r.category, r.outcome) for r in records] == [
        ("cats1", "cats", "a"),
        ("cats2", "cats", "b"),
        ("dogs1", "dogs", "a"),
        ("dogs2", "dogs", "b"),
    ]


def test_hf_save_to_disk_folder(tmp_path: Path) -> None:
    datasets = import_or_skip_outside_ci("datasets")
    dataset = datasets.Dataset.from_list([PAIR, dict(PAIR, chosen="four")])
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(
        tmp_path / "dd"
    )
    records, _ = load_feedback(tmp_path / "dd")
    assert [(r.response_a, r.metadata["_split"]) for r in records] == [
        ("4", "train"),
        ("four", "train"),
        ("4", "test"),
    ]
    dataset.save_to_disk(tmp_path / "one")
    assert len(load_feedback(tmp_path / "one")[0]) == 2


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        list(FeedbackReader(tmp_path / "nope.jsonl"))


# ----------------------------------------------------------------------------- layouts


def test_hh_rlhf_splits_prompt_and_final_turn(tmp_path: Path) -> None:
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color\n\nAssistant: Blue",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a color\n\nAssistant: No",
    }
    reader = FeedbackReader(write_jsonl(tmp_path / "hh.jsonl", [row]))
    (record,) = list(reader)
    assert reader.format_name == "hh-rlhf" and reader.detected
    assert record.prompt == (
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
        Message("user", "Name a color"),
    )
    assert (record.chosen, record.rejected) == ("Blue", "No")


def test_hh_rlhf_with_different_prompts_is_an_error(tmp_path: Path) -> None:
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Bye\n\nAssistant: B"}
    with pytest.raises(DataError, match="rejected.*same conversation") as info:
        list(FeedbackReader(write_jsonl(tmp_path / "hh.jsonl", [row])))
    assert info.value.line == 1 and info.value.reason == "prompt_mismatch"


def test_trl_standard_conversational_implicit_and_unpaired(tmp_path: Path) -> None:
    conversational = {
        "prompt": [{"role": "user", "content": "Sky color?"}],
        "chosen": [{"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "assistant", "content": "Green"}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue"}],
        "rejected": [
            {"role": "user", "content": "Sky?"},
            {"role": "assistant", "content": "Green"},
        ],
    }
    records, _ = load_feedback(
        write_jsonl(tmp_path / "t.jsonl", [PAIR, conversational, implicit]), format="trl"
    )
    assert records[0].chosen == "4"
    assert records[1].prompt == (Message("user", "Sky color?"),) and records[1].chosen == "Blue"
    assert records[2].prompt == (Message("user", "Sky?"),) and records[2].rejected == "Green"
    unpaired = [
        {"prompt": "p", "completion": "good", "label": True},
        {"prompt": "p", "completion": "bad", "label": False},
    ]
    reader = FeedbackReader(write_jsonl(tmp_path / "u.jsonl", unpaired))
    assert [(r.kind, r.response, r.label) for r in reader] == [
        ("binary", "good", True),
        ("binary", "bad", False),
    ]
    assert reader.format_name == "trl-unpaired"


def test_helpsteer_and_ultrafeedback(tmp_path: Path) -> None:
    helpsteer = {
        "prompt": "p",
        "response": "r",
        "helpfulness": 3,
        "correctness": 4,
        "coherence": 4,
        "complexity": 1,
        "verbosity": None,
    }
    (record,) = load_feedback(write_jsonl(tmp_path / "h.jsonl", [helpsteer]))[0]
    assert record.ratings == {
        "helpfulness": 3.0,
        "correctness": 4.0,
        "coherence": 4.0,
        "complexity": 1.0,
        "verbosity": None,
    }
    annotations = {
        aspect: {"Rating": str(value), "Rationale": "..."}
        for aspect, value in zip(
            ("helpfulness", "honesty", "instruction_following", "truthfulness"),
            (5, 4, 3, "N/A"),
            strict=True,
        )
    }
    ultra = {
        "instruction": "Say hi",
        "source": "evol",
        "completions": [
            {"model": "m1", "response": "hi", "annotations": annotations, "overall_score": 7.5},
            {"model": "m2", "response": "hello", "annotations": annotations, "overall_score": 6},
        ],
    }
    records, _ = load_feedback(write_jsonl(tmp_path / "uf.jsonl", [ultra]))
    assert [r.response for r in records] == ["hi", "hello"]
    assert records[0].ratings == {
        "helpfulness": 5.0,
        "honesty": 4.0,
        "instruction_following": 3.0,
        "truthfulness": None,
        "overall": 7.5,
    }
    assert records[1].metadata["model"] == "m2" and records[0].category == "evol"


def test_helpsteer2_preference_sign_and_strength(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "response_1": "x", "response_2": "y", "preference_strength": s}
        for s in (-3, 0, 2)
    ]
    records, _ = load_feedback(write_jsonl(tmp_path / "hs2.jsonl", rows))
    assert [(r.outcome, r.strength) for r in records] == [("a", 3.0), ("tie", 0.0), ("b", 2.0)]


def test_canonical_records_round_trip_through_jsonl(tmp_path: Path) -> None:
    original = PairwiseRecord(
        id="x",
        prompt=(Message("user", "hi"),),
        response_a="a",
        response_b="b",
        votes=("a", None, "tie", "a"),
        strength=2.0,
        category="c",
        metadata={"k": [1]},
    )
    write_records([original], tmp_path / "c.jsonl")
    (back,) = load_feedback(tmp_path / "c.jsonl")[0]
    assert back == original and back.outcome == "a"


# ----------------------------------------------------------------------------- mappings


def test_mapping_joins_fields_and_reads_votes_and_winner_values(tmp_path: Path) -> None:
    rows = [
        {
            "idx": 7,
            "instruction": "Fix:",
            "input": "teh cat",
            "r1": "the cat",
            "r2": "teh cat",
            "j1": 1,
            "j2": 2,
            "j3": 0,
            "extra": "kept",
        }
    ]
    mapping = parse_map_args(
        ["id=idx", "prompt=instruction+input", "response_a=r1", "response_b=r2", "votes=j1+j2+j3"]
    )
    (record,) = load_feedback(
        write_jsonl(tmp_path / "m.jsonl", rows), mapping=mapping, winner_values="a=1,b=2,tie=0"
    )[0]
    assert record.prompt == "Fix:\n\nteh cat"
    assert record.votes == ("a", "b", "tie") and record.outcome == "tie"
    assert record.id == "7" and record.metadata == {"extra": "kept"}


def test_mapping_votes_majority_is_not_swapped(tmp_path: Path) -> None:
    rows = [{"a": "x", "b": "y", "v": [2, 2, 1]}, {"a": "x", "b": "y", "v": [1, 1, 2]}]
    records, _ = load_feedback(
        write_jsonl(tmp_path / "v.jsonl", rows),
        mapping={"response_a": "a", "response_b": "b", "votes": "v"},
        winner_values="a=1,b=2,tie=0",
    )
    assert [r.outcome for r in records] == ["b", "a"]
    assert records[0].votes == ("b", "b", "a")


def test_mapping_ratings_ranking_and_binary(tmp_path: Path) -> None:
    rows = [{"q": "p", "ans": "r", "s": {"help": "4", "safe": None}}]
    (rating,) = load_feedback(
        write_jsonl(tmp_path / "r.jsonl", rows),
        mapping={
            "prompt": "q",
            "response": "ans",
            "rating.helpfulness": "s.help",
            "rating.safety": "s.safe",
        },
    )[0]
    assert rating.ratings == {"helpfulness": 4.0, "safety": None}
    rows = [{"q": "p", "outs": ["x", "y", "z"], "sc": [1, None, 3]}]
    (ranking,) = load_feedback(
        write_jsonl(tmp_path / "k.jsonl", rows),
        mapping={"prompt": "q", "responses": "outs", "scores": "sc"},
    )[0]
    assert isinstance(ranking, RankingRecord) and ranking.scores == (1.0, None, 3.0)
    rows = [{"q": "p", "a": "r", "thumb": "down"}]
    (binary,) = load_feedback(
        write_jsonl(tmp_path / "b.jsonl", rows),
        mapping={"prompt": "q", "response": "a", "label": "thumb"},
    )[0]
    assert binary.label is False


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["prompt"], "KEY=FIELD"),
        (["bogus=x", "chosen=a", "rejected=b"], "unknown key 'bogus'"),
        (["response_a=a", "response_b=b"], "needs winner"),
        (["prompt=p"], "cannot tell the record kind"),
    ],
)
def test_bad_mappings_are_explained(items: list[str], message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        from prefkit.data import MappingLayout

        MappingLayout(parse_map_args(items))


# ----------------------------------------------------------------------------- bad input


def bad_rows_file(tmp_path: Path) -> Path:
    good = json.dumps(PAIR)
    lines = [
        good,  # 1 ok
        '{"prompt": "p", "chosen": "a", ',  # 2 malformed JSON
        json.dumps(
            {"prompt": "p", "chosen": "a"}
        ),  # 3 missing field (unknown layout for trl? rejected missing)
        json.dumps({"prompt": "p", "chosen": 5, "rejected": "b"}),  # 4 wrong type
        json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}),  # 5 empty response
        json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),  # 6 identical
        json.dumps(
            {"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}
        ),  # 7 bad role
        json.dumps({"prompt": "p", "chosen": "x" * 101, "rejected": "b"}),  # 8 too long
        json.dumps([1, 2]),  # 9 not an object
        good,  # 10 ok
    ]
    path = tmp_path / "bad.jsonl"
    data = (
        "\n".join(lines).encode("utf-8")
        + b"\n"
        + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n'
    )
    path.write_bytes(data)  # line 11: bytes that are not UTF-8
    return path


EXPECTED_REJECTS = {
    2: ("malformed_json", None),
    3: ("missing_field", "rejected"),
    4: ("wrong_type", "response_a"),
    5: ("empty_text", "response_a"),
    6: ("identical_responses", "response_b"),
    7: ("bad_role", "prompt[0].role"),
    8: ("text_too_long", "response_a"),
    9: ("wrong_type", None),
    11: ("bad_encoding", None),
}


def test_skip_counts_every_bad_row_and_writes_rejects(tmp_path: Path) -> None:
    path = bad_rows_file(tmp_path)
    rejects = tmp_path / "out.jsonl.rejects.jsonl"
    reader = FeedbackReader(
        path,
        format="trl",
        on_error="skip",
        rejects_path=rejects,
        max_text_chars=100,
        reject_empty_responses=True,
    )
    records = list(reader)
    assert len(records) == 2
    assert reader.stats.n_rows == 11 and reader.stats.rejects.total == 9
    written = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert {row["line"]: (row["reason"], row["field"]) for row in written} == EXPECTED_REJECTS
    assert all(row["source"] == str(path) and row["error"] for row in written)
    assert written[0]["raw"].startswith('{"prompt": "p"')


@pytest.mark.parametrize("line", sorted(EXPECTED_REJECTS))
def test_raise_names_file_line_and_field(tmp_path: Path, line: int) -> None:
    path = bad_rows_file(tmp_path)
    lines = path.read_bytes().split(b"\n")
    single = tmp_path / f"only{line}.jsonl"
    single.write_bytes(lines[0] + b"\n" + lines[line - 1] + b"\n")
    with pytest.raises(DataError) as info:
        list(FeedbackReader(single, format="trl", max_text_chars=100, reject_empty_responses=True))
    error = info.value
    reason, field = EXPECTED_REJECTS[line]
    assert (error.line, error.reason, error.field) == (2, reason, field)
    assert str(error).startswith(f"{single}:2: ")


def test_empty_responses_are_kept_and_counted_by_default(tmp_path: Path) -> None:
    """Line 5 of the bad rows (an empty chosen) is a record unless empties are rejected."""
    path = bad_rows_file(tmp_path)
    reader = FeedbackReader(path, format="trl", on_error="skip", max_text_chars=100)
    records = list(reader)
    assert len(records) == 3 and records[1].chosen == ""
    assert reader.stats.n_empty_responses == 1
    assert reader.stats.rejects.total == len(EXPECTED_REJECTS) - 1
    assert "empty_text" not in reader.stats.rejects.counts
    assert "; 1 empty responses kept; 8 rejected" in reader.stats.summary()


def test_unknown_winner_value_and_non_numeric_rating(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "w.jsonl", [{"a": "x", "b": "y", "w": "both"}])
    with pytest.raises(DataError, match="field 'w'.*winner value.*found str 'both'") as info:
        list(FeedbackReader(path, mapping={"response_a": "a", "response_b": "b", "winner": "w"}))
    assert info.value.reason == "unknown_value"
    path = write_jsonl(tmp_path / "r.jsonl", [{"p": "q", "r": "x", "score": "high"}])
    with pytest.raises(
        DataError, match="field 'score': expected a number, found str 'high'"
    ) as info:
        list(
            FeedbackReader(
                path, mapping={"prompt": "p", "response": "r", "rating.quality": "score"}
            )
        )
    assert info.value.reason == "non_numeric"


def test_csv_wrong_column_count_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"prompt,chosen,rejected\np,a,b\np,a\np,\xff,b\np,c,d\n")
    reader = FeedbackReader(path, format="trl", on_error="skip")
    assert [r.chosen for r in reader] == ["a", "c"]
    assert dict(reader.stats.rejects.counts) == {"wrong_columns": 1, "bad_encoding": 1}
    assert [e.line for e in reader.stats.rejects.examples] == [3, 4]


def test_huge_text_is_rejected_not_truncated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", [dict(PAIR, chosen="y" * 2_000_000)])
    with pytest.raises(DataError, match="at most 1,000,000 characters, found 2,000,000"):
        list(FeedbackReader(path))
    assert len(load_feedback(path, max_text_chars=3_000_000)[0][0].chosen) == 2_000_000


def test_boolean_instead_of_text_is_a_wrong_type_not_the_text_true(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [dict(PAIR, rejected=True)])
    with pytest.raises(DataError, match="found the boolean true"):
        list(FeedbackReader(path))


def test_record_validation_messages() -> None:
    with pytest.raises(FieldError, match="outcome"):
        PairwiseRecord(id="1", prompt="p", response_a="a", response_b="b")
    with pytest.raises(FieldError, match=r"votes\[1\]"):
        PairwiseRecord(id="1", prompt="p", response_a="a", response_b="b", votes=("a", "maybe"))
    with pytest.raises(FieldError, match="kind"):
        record_from_dict({"kind": "nope"})
    with pytest.raises(FieldError, match="either scores or ranks"):
        RankingRecord(id="1", prompt="p", responses=("a", "b"))
    tie = PairwiseRecord(id="1", prompt="p", response_a="same", response_b="same", outcome="tie")
    with pytest.raises(ValueError, match="is a tie"):
        _ = tie.chosen
