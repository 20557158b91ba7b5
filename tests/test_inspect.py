"""Data-set statistics: hand-worked agreement, duplicates, ties, lengths and real data."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from prefkit.data import BinaryRecord, PairwiseRecord, RankingRecord, RatingRecord, read_feedback
from prefkit.data.errors import DataError
from prefkit.data.inspect import format_report, inspect_records, report_dict
from prefkit.data.read import ReadStats


def pair(
    record_id: str, votes=None, *, prompt="p", a="x", b="y", outcome=None, category=None
) -> PairwiseRecord:
    return PairwiseRecord(
        id=record_id,
        prompt=prompt,
        response_a=a,
        response_b=b,
        outcome=outcome,
        votes=votes,
        category=category,
    )


def summarise(records, **options) -> dict:
    summary = report_dict(inspect_records(records), **options)
    assert json.loads(json.dumps(summary)) == summary
    return summary


def test_agreement_worked_by_hand_for_three_items_and_three_annotators() -> None:
    """Votes (annotators 1, 2, 3):  item 1: a a a;  item 2: a a b;  item 3: b tie tie.

    Fleiss' kappa, categories (a, b, tie), n = 3 votes per item:
        counts n_ij:  item 1 (3, 0, 0), item 2 (2, 1, 0), item 3 (0, 1, 2)
        P_i = sum_j n_ij (n_ij - 1) / (n (n - 1)):
              item 1 = 6/6 = 1,  item 2 = 2/6 = 1/3,  item 3 = 2/6 = 1/3
        P_bar = (1 + 1/3 + 1/3) / 3 = 5/9
        p_j = column totals / 9 = (5/9, 2/9, 2/9);  P_e = (25 + 4 + 4) / 81 = 11/27
        kappa = (5/9 - 11/27) / (1 - 11/27) = (4/27) / (16/27) = 1/4
    Pairwise percent agreement (items where the two agree / items both voted on):
        (1, 2): items 1, 2 -> 2/3;  (1, 3): item 1 -> 1/3;  (2, 3): items 1, 3 -> 2/3;  mean 5/9
    Majorities: a, a, tie. Agreement with the majority:
        annotator 1 (a, a, b): 2/3;  annotator 2 (a, a, tie): 3/3;  annotator 3 (a, b, tie): 2/3
    """
    records = [
        pair("1", ("a", "a", "a")),
        pair("2", ("a", "a", "b")),
        pair("3", ("b", "tie", "tie")),
    ]
    votes = summarise(records)["votes"]
    assert votes["fleiss_kappa"] == pytest.approx(0.25)
    assert votes["pairwise_agreement"] == pytest.approx(
        {
            "annotator1/annotator2": 2 / 3,
            "annotator1/annotator3": 1 / 3,
            "annotator2/annotator3": 2 / 3,
        }
    )
    assert votes["percent_agreement"] == pytest.approx(5 / 9)
    assert votes["agreement_with_majority"] == pytest.approx(
        {"annotator1": 2 / 3, "annotator2": 1.0, "annotator3": 2 / 3}
    )
    assert (votes["n_with_votes"], votes["n_votes"], votes["n_tie_votes"], votes["n_split"]) == (
        3,
        9,
        2,
        0,
    )
    assert votes["vote_counts"] == {"a": 5, "b": 2, "tie": 2}


def test_missing_votes_and_splits() -> None:
    """Item 1: a, None, a; item 2: a, b, None (a split); item 3: tie only (one vote: no agreement).

    Fleiss over items 1 and 2 (two votes each): P_1 = 2/2 = 1, P_2 = 0, P_bar = 1/2;
    totals a = 3, b = 1 -> P_e = (9 + 1) / 16 = 5/8; kappa = (1/2 - 5/8) / (3/8) = -1/3.
    Pairs: (1, 3) agree on item 1 -> 1/1; (1, 2) disagree on item 2 -> 0/1; mean 1/2.
    Majority only on item 1 (item 2 is split): annotators 1 and 3 agree with it.
    """
    records = [
        pair("1", ("a", None, "a")),
        pair("2", ("a", "b", None)),
        pair("3", (None, None, "tie")),
    ]
    votes = summarise(records)["votes"]
    assert votes["fleiss_kappa"] == pytest.approx(-1 / 3)
    assert votes["pairwise_agreement"] == {
        "annotator1/annotator2": 0.0,
        "annotator1/annotator3": 1.0,
    }
    assert votes["percent_agreement"] == pytest.approx(0.5)
    assert votes["agreement_with_majority"] == {"annotator1": 1.0, "annotator3": 1.0}
    assert (votes["n_with_votes"], votes["n_votes"], votes["n_missing_votes"]) == (3, 5, 4)
    assert (votes["n_items_multi"], votes["n_split"], votes["n_tie_votes"]) == (2, 1, 1)


def test_unanimous_votes_in_one_category_have_no_kappa() -> None:
    votes = summarise([pair("1", ("a", "a")), pair("2", ("a", "a"))])["votes"]
    assert votes["fleiss_kappa"] is None and votes["percent_agreement"] == 1.0


def test_ties_outcomes_duplicates_and_prompts() -> None:
    records = [
        pair("1", outcome="a"),
        pair("2", outcome="a"),  # same content as 1 under another id: a duplicate
        pair("3", outcome="b"),  # same texts, other outcome: not a duplicate
        pair("4", outcome="tie", prompt="q"),
        pair("5", outcome="a", category="c"),  # same content as 1 again (category is not content)
        pair(
            "6", outcome="tie", prompt=[{"role": "user", "content": "q"}]
        ),  # a conversation is another prompt
    ]
    summary = summarise(records)
    assert summary["n_records"] == 6 and summary["kinds"] == {"pairwise": 6}
    assert summary["outcomes"] == {"a": 3, "b": 1, "tie": 2}
    assert summary["n_ties"] == 2 and summary["tie_rate"] == pytest.approx(2 / 6)
    assert summary["n_exact_duplicates"] == 2
    assert summary["n_distinct_prompts"] == 3
    assert summary["categories"] == {"n_distinct": 1, "n_missing": 5, "top": {"c": 1}}


def test_duplicates_across_kinds_compare_labels() -> None:
    records = [
        BinaryRecord(id="1", prompt="p", response="x", label=True),
        BinaryRecord(id="2", prompt="p", response="x", label=True),
        BinaryRecord(id="3", prompt="p", response="x", label=False),
        RatingRecord(id="4", prompt="p", response="x", ratings={"s": 1}),
        RatingRecord(id="5", prompt="p", response="x", ratings={"s": 2}),
        RatingRecord(id="6", prompt="p", response="x", ratings={"s": 1}),
    ]
    summary = summarise(records)
    assert summary["n_exact_duplicates"] == 2 and summary["n_distinct_prompts"] == 1
    assert summary["binary"] == {"n_good": 2, "n_bad": 1, "good_rate": pytest.approx(2 / 3)}
    assert summary["tie_rate"] is None


def test_lengths_in_characters() -> None:
    """Prompt lengths 1, 2, 3, 4, 100: median 3, mean 110/5 = 22,
    p95 by linear interpolation at position 0.95 * 4 = 3.8: 4 + 0.8 * (100 - 4) = 80.8.
    Conversation lengths count the content only: "ab" + "cde" = 5.
    """
    prompts = ["a", "bb", "ccc", "dddd", "e" * 100]
    records = [
        BinaryRecord(id=str(i), prompt=text, response="r" * (i + 1), label=True)
        for i, text in enumerate(prompts)
    ]
    records.append(
        BinaryRecord(
            id="c",
            prompt="",
            label=False,
            response=[
                {"role": "assistant", "content": "ab"},
                {"role": "assistant", "content": "cde"},
            ],
        )
    )
    lengths = summarise(records[:5])["lengths"]
    assert lengths["prompt"] == {
        "min": 1,
        "median": 3.0,
        "mean": 22.0,
        "p95": pytest.approx(80.8),
        "max": 100,
    }
    assert lengths["response"] == {
        "min": 1,
        "median": 3.0,
        "mean": 3.0,
        "p95": pytest.approx(4.8),
        "max": 5,
    }
    assert summarise(records)["lengths"]["response"]["max"] == 5
    assert summarise([])["lengths"] == {"prompt": None, "response": None}


def test_rating_attributes() -> None:
    records = [
        RatingRecord(id="1", prompt="p", response="x", ratings={"h": 1, "v": 2}),
        RatingRecord(id="2", prompt="p", response="y", ratings={"h": 4, "v": None}),
        RatingRecord(id="3", prompt="p", response="z", ratings={"h": 2.5}),
    ]
    attributes = summarise(records)["rating_attributes"]
    assert attributes == {
        "h": {"count": 3, "missing": 0, "mean": 2.5, "min": 1.0, "max": 4.0},
        "v": {"count": 1, "missing": 2, "mean": 2.0, "min": 2.0, "max": 2.0},
    }


def test_ranking_statistics() -> None:
    records = [
        RankingRecord(id="1", prompt="p", responses=("a", "b", "c"), scores=(1, None, 1)),
        RankingRecord(id="2", prompt="p", responses=("a", "b"), ranks=(1, 2)),
    ]
    ranking = summarise(records)["ranking"]
    assert ranking == {
        "n_rankings": 2,
        "responses_per_ranking": {"min": 2, "median": 2.5, "mean": 2.5, "max": 3},
        "n_responses": 5,
        "n_missing_scores": 1,
        "n_by_ranks": 1,
        "n_with_tied_scores": 1,
    }


def test_report_dict_includes_the_read_ledger_and_renders_as_text() -> None:
    stats = ReadStats(n_rows=5)
    stats.rejects.add(DataError("f.jsonl", 3, "prompt", "bad", reason="wrong_type"))
    stats.dropped["unit with no text"] += 1
    records = [
        pair("1", ("a", "b", "tie")),
        RatingRecord(id="2", prompt="p", response="x", ratings={"s": 1}),
    ]
    summary = summarise(records, format_name="prefkit", read_stats=stats)
    for key in (
        "format",
        "n_records",
        "kinds",
        "n_ties",
        "n_rejected",
        "rejected_by_reason",
        "dropped",
        "n_distinct_prompts",
        "n_exact_duplicates",
        "tie_rate",
        "outcomes",
        "votes",
        "lengths",
        "rating_attributes",
        "ranking",
        "binary",
        "categories",
    ):
        assert key in summary
    assert (summary["format"], summary["n_rows"], summary["n_rejected"]) == ("prefkit", 5, 1)
    assert summary["rejected_by_reason"] == {"wrong_type": 1}
    assert summary["dropped"] == {"unit with no text": 1}
    text = format_report(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["format", "prefkit"]
    assert lines[1].split()[:2] == ["records", "2"] and re.search(
        r"^rejected +1 \(wrong_type 1\)$", text, re.M
    )
    assert "Fleiss kappa" in text and "ratings" in text
    # Labels are aligned: every line's text starts in the same column, after two spaces.
    column = len(lines[0]) - len("prefkit")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)
    assert summarise([])["n_rejected"] is None


# --------------------------------------------------------------------------- real data

# PandaLM vote patterns over the 993 readable records, tallied from the raw file (1 = response1,
# 2 = response2, 0 = tie; sorted per record).
PANDALM_PATTERNS = {
    (0, 0, 0): 85,
    (0, 0, 1): 7,
    (0, 0, 2): 13,
    (0, 1, 1): 18,
    (0, 2, 2): 9,
    (1, 1, 1): 367,
    (1, 1, 2): 33,
    (1, 2, 2): 36,
    (2, 2, 2): 425,
}


def test_pandalm_votes_ties_and_agreement(shared_data: Path) -> None:
    """Majority ties: (0,0,0) + (0,0,1) + (0,0,2) = 85 + 7 + 13 = 105; no record has three
    different votes, so no split. Tie votes: 3*85 + 2*(7 + 13) + 18 + 9 = 322.
    Kappa from the tallies with the formula of the module docstring.
    """
    path = shared_data / "pandalm-testset" / "testset-v1.json"
    reader = read_feedback(path, format="pandalm", on_error="skip")
    summary = report_dict(
        inspect_records(reader), format_name=reader.format_name, read_stats=reader.stats
    )
    assert (summary["format"], summary["n_records"], summary["n_rejected"]) == ("pandalm", 993, 6)
    assert summary["rejected_by_reason"] == {"wrong_type": 6}
    assert summary["n_ties"] == 105 and summary["outcomes"] == {"a": 418, "b": 470, "tie": 105}
    votes = summary["votes"]
    assert (votes["n_with_votes"], votes["n_votes"], votes["n_tie_votes"], votes["n_split"]) == (
        993,
        2979,
        322,
        0,
    )
    totals = Counter()
    agreement = 0.0
    for pattern, count in PANDALM_PATTERNS.items():
        tally = Counter(pattern)
        totals.update({vote: n * count for vote, n in tally.items()})
        agreement += count * sum(n * (n - 1) for n in tally.values()) / 6
    observed = agreement / 993
    expected = sum((n / 2979) ** 2 for n in totals.values())
    assert votes["fleiss_kappa"] == pytest.approx((observed - expected) / (1 - expected))
    assert votes["percent_agreement"] == pytest.approx(observed)
    # 170 distinct prompts; 97 records repeat an earlier record's prompt, responses and majority.
    assert summary["n_distinct_prompts"] == 170 and summary["n_exact_duplicates"] == 97


def test_ukp_folder_pairs_topics_and_no_ties(shared_data: Path) -> None:
    reader = read_feedback(shared_data / "ukpconvarg1" / "UKPConvArg1Strict-CSV")
    summary = report_dict(
        inspect_records(reader), format_name=reader.format_name, read_stats=reader.stats
    )
    assert (summary["format"], summary["n_records"], summary["n_rejected"]) == (
        "ukp-convarg",
        11_650,
        0,
    )
    assert summary["categories"]["n_distinct"] == 32 and summary["categories"]["n_missing"] == 0
    assert summary["n_ties"] == 0 and summary["outcomes"] == {"a": 5872, "b": 5778, "tie": 0}
    assert summary["votes"]["n_with_votes"] == 0
    # Arguments are pairs without a prompt; 102 pairs repeat an earlier pair's texts and label.
    assert summary["n_distinct_prompts"] == 1 and summary["n_exact_duplicates"] == 102


def test_usr_rating_attributes(shared_data: Path) -> None:
    reader = read_feedback(shared_data / "usr-topicalchat-ratings" / "topical_chat.json")
    summary = report_dict(
        inspect_records(reader), format_name=reader.format_name, read_stats=reader.stats
    )
    attributes = summary["rating_attributes"]
    assert list(attributes) == [
        "understandability",
        "naturalness",
        "coherence",
        "engagingness",
        "groundedness",
        "overall",
    ]
    assert all(stats["count"] == 360 and stats["missing"] == 0 for stats in attributes.values())
    assert (attributes["overall"]["min"], attributes["overall"]["max"]) == (1.0, 5.0)
    assert summary["n_distinct_prompts"] == 60 and summary["categories"]["n_distinct"] == 6
