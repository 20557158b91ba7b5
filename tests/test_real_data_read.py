"""Real human-feedback data sets from ../shared/data read with the expected counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefkit.data import FeedbackReader, RankingRecord, RatingRecord, load_feedback


def test_ukp_strict_folder_reads_as_pairs_with_topics(shared_data: Path) -> None:
    reader = FeedbackReader(shared_data / "ukpconvarg1" / "UKPConvArg1Strict-CSV")
    records = list(reader)
    assert reader.format_name == "ukp-convarg" and reader.detected
    assert len(records) == 11_650 and reader.stats.rejects.total == 0
    topics = Counter(record.category for record in records)
    assert len(topics) == 32
    assert topics["ban-plastic-water-bottles_no-bad-for-the-economy"] > 0
    first = records[0]
    # First line of the first file: arg219237_arg219207, label a2 -> the second argument wins.
    assert first.id == "arg219237_arg219207" and first.outcome == "b"
    assert first.chosen.startswith("Bottled water consumption has grown")
    assert {record.outcome for record in records} == {"a", "b"}


def test_pandalm_votes_and_wrong_type_rejects(shared_data: Path) -> None:
    path = shared_data / "pandalm-testset" / "testset-v1.json"
    reader = FeedbackReader(path, format="pandalm", on_error="skip")
    records = list(reader)
    assert reader.stats.n_rows == 999
    assert len(records) == 993
    assert dict(reader.stats.rejects.counts) == {"wrong_type": 6}
    assert sorted(int(e.raw["idx"]) for e in reader.stats.rejects.examples) == [
        157,
        158,
        159,
        161,
        162,
        164,
    ]
    assert all(len(record.votes) == 3 for record in records)
    # 54 records hold an empty model output, judged like any other: kept and counted,
    # rejected only with --reject-empty-responses.
    assert reader.stats.n_empty_responses == 54
    assert (
        sum(not response.strip() for record in records for _, response in record.named_responses())
        == 54
    )
    _, stats = load_feedback(path, format="pandalm", on_error="skip", reject_empty_responses=True)
    assert dict(stats.rejects.counts) == {"wrong_type": 6, "empty_text": 54}
    assert stats.n_empty_responses == 0


def test_wmt_mqm_reads_one_ranking_per_rated_segment(shared_data: Path) -> None:
    reader = FeedbackReader(shared_data / "wmt-mqm-ted-ende")
    records = list(reader)
    assert reader.format_name == "wmt-mqm"
    # 606 segments; 77 were rated by no system (all scores None, no texts) and are counted as dropped.
    assert len(records) == 529
    assert dict(reader.stats.dropped) == {"segment with no texts (not rated by any system)": 77}
    assert all(
        isinstance(record, RankingRecord) and len(record.responses) == 14 for record in records
    )
    first = records[0]
    assert first.id == "seg-1" and first.response_ids[0] == "Facebook-AI"
    assert first.scores[0] == -1.0  # "Facebook-AI -1.000000 1"
    assert "<v>" not in first.responses[0]
    assert "ref-A" in first.response_ids


def test_wmt_mqm_none_scores_stay_missing(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "wmt-mqm-ted-ende"
    lines = (source / "mqm_ted_ende.avg_seg_scores.tsv").read_text(encoding="utf-8").splitlines()
    # Mark one rated system of segment 1 as not rated: its score must read as missing.
    lines[1] = lines[1].replace("-1.000000", "None")
    (tmp_path / "x.avg_seg_scores.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "x.tsv").write_bytes((source / "mqm_ted_ende.tsv").read_bytes())
    first = next(iter(FeedbackReader(tmp_path)))
    assert first.scores[0] is None and first.scores[1] is not None


def test_usr_ratings_have_six_attributes(shared_data: Path) -> None:
    records, stats = load_feedback(shared_data / "usr-topicalchat-ratings" / "topical_chat.json")
    assert len(records) == 360 and stats.rejects.total == 0
    assert all(isinstance(record, RatingRecord) for record in records)
    assert set(records[0].ratings) == {
        "understandability",
        "naturalness",
        "coherence",
        "engagingness",
        "groundedness",
        "overall",
    }
    assert records[0].ratings["overall"] == 4.6666666667
    assert len({record.category for record in records}) == 6  # six systems


def test_cranfield_graded_rankings(shared_data: Path) -> None:
    reader = FeedbackReader(shared_data / "cranfield")
    records = list(reader)
    assert reader.format_name == "cranfield"
    # 225 queries; 6 keep fewer than two judged documents and are dropped with the reason.
    assert len(records) == 219
    assert reader.stats.dropped["query with fewer than two judged documents"] == 6
    judged = sum(len(record.responses) for record in records)
    # 1,837 judgments: 225 graded -1 (one per query, undefined) and one document with no
    # text are dropped with their reasons.
    dropped = reader.stats.dropped
    assert dropped["judgment graded -1 (undefined in the collection)"] == 225
    # The six dropped queries had one judged document each.
    assert judged == 1_837 - 225 - 1 - 6
    assert all(score in (1.0, 2.0, 3.0, 4.0) for record in records for score in record.scores)
    first = records[0]
    assert first.prompt.startswith("what similarity laws must be obeyed")
    # cranqrel "1 184 2": grade 2 -> gain 3; "1 12 3" -> gain 2.
    gains = dict(zip(first.response_ids, first.scores, strict=True))
    assert gains["184"] == 3.0 and gains["12"] == 2.0
    # qid in cranqrel is the query's position: query 3 is '.I 004'.
    assert records[2].metadata["query_number"] == "004"
