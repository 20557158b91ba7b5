"""Evaluation on real human feedback from ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from prefkit.data import RankingRecord, load_feedback
from prefkit.data.records import Text, render_text
from prefkit.eval.evaluate import evaluate
from prefkit.eval.scorers import LengthScorer


def test_pandalm_with_ties_and_three_annotators(shared_data: Path) -> None:
    records, stats_ = load_feedback(
        shared_data / "pandalm-testset" / "testset-v1.json",
        format="pandalm",
        on_error="skip",
    )
    assert len(records) == 993 and stats_.rejects.total == 6
    run = evaluate(LengthScorer(), records, n_resamples=200, n_rejected=stats_.rejects.total)
    metrics = run.to_json()
    assert run.n_records == 993 and run.n_rejected == 6
    # Plurality of the three annotators; an even split is a tie.
    human_ties = sum(record.outcome == "tie" for record in records)
    assert (metrics["n_total"], metrics["n_human_ties"]) == (993, human_ties) and human_ties > 0
    # The length baseline is right when the preferred response is strictly longer.
    strict = [record for record in records if record.outcome != "tie"]
    longer_wins = sum(len(render_text(r.chosen)) > len(render_text(r.rejected)) for r in strict)
    assert metrics["n"] == len(strict)
    assert metrics["accuracy"] == pytest.approx(longer_wins / len(strict))
    low, high = metrics["accuracy_ci95"]
    assert low < metrics["accuracy"] < high
    # Three-way accuracy with band 0: a tie is predicted only for equal lengths.
    equal_and_tied = sum(
        len(render_text(r.response_a)) == len(render_text(r.response_b))
        for r in records
        if r.outcome == "tie"
    )
    assert metrics["three_way_accuracy"] == pytest.approx(
        (longer_wins + equal_and_tied) / len(records)
    )
    agreement = metrics["annotator_agreement"]
    assert agreement["n_annotators"] == 3 and len(agreement["per_annotator"]) == 3
    tie_votes = Counter(record.votes[0] for record in records)["tie"]
    assert agreement["per_annotator"][0]["n_tie_votes"] == tie_votes
    assert metrics["bootstrap"]["unit"] == "prompt"  # PandaLM repeats instructions
    assert metrics["length_bias"]["spearman"] == pytest.approx(1.0)


def test_wmt_mqm_segments_as_rankings(shared_data: Path) -> None:
    records, _ = load_feedback(shared_data / "wmt-mqm-ted-ende")
    metrics = evaluate(LengthScorer(), records, n_resamples=0).to_json()
    ranking = metrics["ranking"]
    assert ranking["n_rankings"] == 529
    assert ranking["ndcg"] is None  # MQM scores are negated error weights, not graded relevance
    # Reference: scipy's tau-b and Spearman per segment, over segments whose gold is not constant.
    taus, rhos = [], []
    for record in records:
        gold = np.array([math.nan if s is None else s for s in record.scores])
        lengths = np.array([len(response) for response in record.responses], dtype=float)
        kept = ~np.isnan(gold)
        gold, lengths = gold[kept], lengths[kept]
        if len(gold) < 2 or np.all(gold == gold[0]):
            continue
        if np.all(lengths == lengths[0]):
            taus.append(0.0)
            rhos.append(0.0)
            continue
        taus.append(stats.kendalltau(lengths, gold).statistic)
        rhos.append(stats.spearmanr(lengths, gold).statistic)
    assert ranking["n_prompts"] == len(taus)
    assert ranking["kendall_tau_b"] == pytest.approx(np.mean(taus))
    assert ranking["spearman"] == pytest.approx(np.mean(rhos))


STOPWORDS = frozenset(
    "a an and are as at be been by can do does for from has have how in is it its of on or that "
    "the there this to what which with".split()
)


def words(text: Text) -> list[str]:
    return [
        word for word in re.findall(r"[a-z]+", render_text(text).lower()) if word not in STOPWORDS
    ]


class BM25Scorer:
    """A lexical retrieval baseline: Okapi BM25 (k1 = 1.2, b = 0.75), with document
    frequencies over the documents it is given."""

    name = "bm25"

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        documents = [Counter(words(text)) for text in responses]
        n_documents = len(documents)
        frequency = Counter(word for document in documents for word in document)
        mean_length = sum(sum(d.values()) for d in documents) / n_documents
        rewards = []
        for prompt, document in zip(prompts, documents):
            length = sum(document.values())
            total = 0.0
            for word in set(words(prompt)) & set(document):
                idf = math.log(1 + (n_documents - frequency[word] + 0.5) / (frequency[word] + 0.5))
                count = document[word]
                total += idf * count * 2.2 / (count + 1.2 * (0.25 + 0.75 * length / mean_length))
            rewards.append(total)
        return np.array(rewards)


def test_cranfield_graded_relevance_ndcg_at_10(shared_data: Path) -> None:
    """NDCG@10 over each query's judged documents, graded 1 (complete answer, gain 4) to 4
    (minimum interest, gain 1). The judgments coded -1 are left out: the collection does not
    define that code, and it is not "not relevant" (each query has exactly one such document,
    and BM25 ranks it first among the judged documents for about half of the queries; it
    looks like the paper the question was written from)."""
    records, _ = load_feedback(shared_data / "cranfield")
    graded = []
    for record in records:
        kept = [i for i, grade in enumerate(record.metadata["grades"]) if grade > 0]
        if len(kept) >= 2:
            graded.append(
                RankingRecord(
                    record.id,
                    record.prompt,
                    tuple(record.responses[i] for i in kept),
                    scores=tuple(record.scores[i] for i in kept),
                )
            )
    assert len(graded) > 200
    run = evaluate([BM25Scorer(), LengthScorer()], graded, n_resamples=100)
    bm25, length = (model.metrics["ranking"] for model in run.models)
    assert bm25["ndcg"]["k"] == 10 and bm25["ndcg"]["n_prompts"] == len(graded)
    # Every list holds judged documents only, so any order scores high; BM25 still orders
    # the grades better than length does, and length is no better than chance.
    assert bm25["ndcg"]["ndcg"] > length["ndcg"]["ndcg"] + 0.02
    assert bm25["kendall_tau_b"] > 0.1 > abs(length["kendall_tau_b"])
    assert run.models[0].metrics["best_of_n"]["n_prompts"] > 0
