"""Reward models: embedding cache, save/load, learning, losses per data kind,
truncation, pooling, LoRA persistence and exact resume.

Most tests use tiny random-weight checkpoints (hidden size 32) with the packaged
MiniLM tokenizer copied beside them; one uses the real MiniLM on a few texts.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefkit.data.records import PairwiseRecord, RankingRecord, RatingRecord
from prefkit.rm.encoder import EmbeddingCache, FrozenEncoder, default_backbone, pool_hidden_states
from prefkit.rm.examples import ItemIndex, build_examples
from prefkit.rm.model import RewardModel, pad_sequences
from prefkit.rm.spec import BackboneSpec, RewardModelSpec
from prefkit.rm.task import choose_loss, evaluate_examples, example_losses, make_batch
from prefkit.rm.train import (
    RMTrainConfig,
    build_store,
    default_train_config,
    new_model,
    train_reward_model,
)
from prefkit.rm.transformer_model import TransformerRewardModel, tokenize_pair
from prefkit.train.loop import TrainConfig

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _copy_tokenizer(folder: Path) -> None:
    source = Path(default_backbone())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)


def make_tiny_bert(folder: Path) -> str:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    _copy_tokenizer(folder)
    return str(folder)


def make_tiny_llama(folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    _copy_tokenizer(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "table",
    "music",
    "paper",
    "light",
    "sound",
    "water",
    "house",
    "chair",
    "bread",
    "glass",
    "plant",
    "train",
    "horse",
    "money",
    "dream",
]


def keyword_pairs(count: int, seed: int) -> list[PairwiseRecord]:
    """Pairs of equally long responses; the one containing 'excellent' wins."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        good = rng.sample(WORDS, 4)
        good.insert(rng.randrange(5), "excellent")
        bad = rng.sample(WORDS, 5)
        a_wins = rng.random() < 0.5
        response_a, response_b = (
            (" ".join(good), " ".join(bad)) if a_wins else (" ".join(bad), " ".join(good))
        )
        records.append(
            PairwiseRecord(
                id=f"p{seed}-{index}",
                prompt="say something",
                response_a=response_a,
                response_b=response_b,
                outcome="a" if a_wins else "b",
            )
        )
    return records


def quick_config(backbone: str, tmp_path: Path, **overrides) -> RMTrainConfig:
    values = dict(
        backbone=backbone,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        device="cpu",
    )
    values.update(overrides)
    loop_names = {item.name for item in dataclasses.fields(TrainConfig)}
    loop = {name: values.pop(name) for name in list(values) if name in loop_names}
    mode = values.get("mode", "embedding")
    return RMTrainConfig(**values, train=default_train_config(mode, **loop))


def pair_accuracy(model: RewardModel, records: list[PairwiseRecord]) -> float:
    prompts = [record.prompt for record in records]
    rewards_a = model.score(prompts, [record.response_a for record in records])
    rewards_b = model.score(prompts, [record.response_b for record in records])
    return float(np.mean((rewards_a > rewards_b) == np.array([r.outcome == "a" for r in records])))


def test_learns_keyword_preference_and_round_trips(tiny_bert, tmp_path):
    train_records, test_records = keyword_pairs(240, seed=1), keyword_pairs(100, seed=2)
    config = quick_config(tiny_bert, tmp_path, epochs=8, features="response", dropout=0.0)
    report = train_reward_model(train_records, config, tmp_path / "rm", log=lambda line: None)
    assert report.loss == "bradley-terry"
    accuracy = pair_accuracy(report.model, test_records)
    assert accuracy > 0.9, accuracy

    loaded = RewardModel.load(tmp_path / "rm", cache_dir=tmp_path / "cache")
    prompts = [r.prompt for r in test_records]
    responses = [r.response_a for r in test_records]
    np.testing.assert_array_equal(
        report.model.score(prompts, responses), loaded.score(prompts, responses)
    )
    compare = loaded.compare(prompts[0], test_records[0].response_a, test_records[0].response_b)
    assert 0.0 <= compare <= 1.0
    assert (compare > 0.5) == (test_records[0].outcome == "a")

    config_json = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config_json["backbone"]["weights_hash"] and config_json["max_length"] == 256
    assert {"reward_mean", "reward_std"} <= set(config_json)
    assert not list((tmp_path / "rm").rglob("*.bin")) and not list((tmp_path / "rm").rglob("*.pt"))


def test_cache_hit_skips_encoder(tiny_bert, tmp_path):
    texts = ["one text", "another text", "one text", "a third"]
    first = FrozenEncoder(tiny_bert, max_length=16)
    cache = EmbeddingCache(tmp_path / "cache")
    computed = cache.encode(first, texts)
    assert first.calls >= 1 and first._model is not None
    second = FrozenEncoder(tiny_bert, max_length=16)
    cached = EmbeddingCache(tmp_path / "cache").encode(second, texts)
    assert second.calls == 0 and second._model is None
    np.testing.assert_array_equal(computed.embeddings, cached.embeddings)
    np.testing.assert_array_equal(computed.embeddings[0], computed.embeddings[2])
    # Another max length is another cache namespace.
    third = FrozenEncoder(tiny_bert, max_length=8)
    EmbeddingCache(tmp_path / "cache").encode(third, texts)
    assert third.calls >= 1


def test_second_training_run_does_not_load_encoder(tiny_bert, tmp_path, monkeypatch):
    records = keyword_pairs(40, seed=3)
    train_reward_model(
        records, quick_config(tiny_bert, tmp_path, epochs=1), tmp_path / "a", log=lambda _: None
    )
    calls = []
    original = FrozenEncoder.encode

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(FrozenEncoder, "encode", counting)
    train_reward_model(
        records, quick_config(tiny_bert, tmp_path, epochs=1), tmp_path / "b", log=lambda _: None
    )
    assert calls == []


def test_loss_chosen_from_data_and_each_kind_trains(tiny_bert, tmp_path):
    base = keyword_pairs(24, seed=4)
    ties = [
        PairwiseRecord(
            id=r.id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            outcome="tie" if i % 4 == 0 else r.outcome,
        )
        for i, r in enumerate(base)
    ]
    votes = [
        PairwiseRecord(
            id=r.id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            votes=("a", "b", "a"),
        )
        for r in base
    ]
    margins = [
        PairwiseRecord(
            id=r.id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            outcome=r.outcome,
            margin=1.0,
        )
        for r in base
    ]
    strengths = [
        PairwiseRecord(
            id=r.id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            outcome=r.outcome,
            strength=2.0,
        )
        for r in base
    ]
    rankings = [
        RankingRecord(
            id=f"r{i}",
            prompt="q",
            responses=[f"{WORDS[i]} a", f"{WORDS[i]} b c", "x y z w"],
            ranks=[1, 2, None] if i % 2 else [1, 1, 3],
        )
        for i in range(10)
    ]
    ratings = [
        RatingRecord(
            id=f"t{i}",
            prompt="q",
            response=f"{WORDS[i]} text",
            ratings={"helpful": float(i), "safe": None if i % 3 else 1.0},
        )
        for i in range(10)
    ]
    expected = {
        "davidson": ties,
        "soft-label": votes,
        "bt-margin": margins,
        "bt-strength": strengths,
        "plackett-luce": rankings,
        "regression": ratings,
        "bradley-terry": base,
    }
    for loss, records in expected.items():
        assert choose_loss(records) == loss
        report = train_reward_model(
            records,
            quick_config(tiny_bert, tmp_path, epochs=1),
            tmp_path / loss,
            log=lambda _: None,
        )
        assert report.loss == loss and np.isfinite(report.stages["train"].result.last_train_loss)
        loaded = RewardModel.load(tmp_path / loss, cache_dir=tmp_path / "cache")
        assert loaded.score(["q"], ["some answer"]).shape == (1,)
    assert "tie_log_nu" in load_file(tmp_path / "davidson" / "model.safetensors")
    attributes = RewardModel.load(
        tmp_path / "regression", cache_dir=tmp_path / "cache"
    ).score_attributes(["q"], ["x"])
    assert set(attributes) == {"helpful", "safe"}
    with pytest.raises(ValueError, match="ties"):
        choose_loss(ties, "bradley-terry")
    with pytest.raises(ValueError, match="does not fit"):
        choose_loss(rankings, "bradley-terry")


# Each loss against a known true reward: the quality of a response is how many times it
# says "excellent" (0, 1 or 2 of its 6 words). Training labels are derived from that
# quality in the form each loss reads (ties, votes, margins, strengths, ranks, ratings);
# the held-out check is pair accuracy on new responses of different quality, and the
# same labels turned around (a <-> b, ranks reversed, ratings mirrored) must turn the
# learned order around too, so an orientation error in any loss cannot pass.

KIND_LOSSES = ("davidson", "soft-label", "bt-margin", "bt-strength", "plackett-luce", "regression")


def quality_response(rng: random.Random, quality: int) -> str:
    words = rng.sample(WORDS, 6 - quality) + ["excellent"] * quality
    rng.shuffle(words)
    return " ".join(words)


def quality_records(loss: str, count: int, seed: int, flipped: bool) -> list:
    """``count`` records for ``loss`` labelled by the true quality (or against it if ``flipped``)."""
    rng = random.Random(seed)
    swap = {"a": "b", "b": "a", "tie": "tie"}
    if loss == "plackett-luce":
        records = []
        for index in range(count):
            qualities = [0, 1, 2]
            rng.shuffle(qualities)
            records.append(
                RankingRecord(
                    id=f"r{index}",
                    prompt="say something",
                    responses=[quality_response(rng, q) for q in qualities],
                    ranks=[1 + q if flipped else 3 - q for q in qualities],  # rank 1 is best
                )
            )
        return records
    if loss == "regression":
        records = []
        for index in range(count):
            quality = rng.randrange(3)
            records.append(
                RatingRecord(
                    id=f"t{index}",
                    prompt="say something",
                    response=quality_response(rng, quality),
                    ratings={"quality": float(2 - quality if flipped else quality)},
                )
            )
        return records
    records = []
    while len(records) < count:
        quality_a, quality_b = rng.randrange(3), rng.randrange(3)
        if quality_a == quality_b and loss != "davidson":
            continue
        better = "tie" if quality_a == quality_b else "a" if quality_a > quality_b else "b"
        better = swap[better] if flipped else better
        common = dict(
            id=f"q{len(records)}",
            prompt="say something",
            response_a=quality_response(rng, quality_a),
            response_b=quality_response(rng, quality_b),
        )
        gap = float(abs(quality_a - quality_b))
        if loss == "davidson":
            records.append(PairwiseRecord(outcome=better, **common))
        elif loss == "soft-label":
            votes = (better, better, swap[better]) if rng.random() < 0.5 else (better,) * 3
            records.append(PairwiseRecord(votes=votes, **common))
        elif loss == "bt-margin":
            records.append(PairwiseRecord(outcome=better, margin=gap, **common))
        else:
            records.append(PairwiseRecord(outcome=better, strength=gap, **common))
    return records


@pytest.fixture(scope="module")
def quality_cache(tmp_path_factory) -> Path:
    """One embedding cache for every kind: the texts repeat across them."""
    return tmp_path_factory.mktemp("quality-cache")


@pytest.mark.parametrize("loss", KIND_LOSSES)
def test_each_kind_learns_a_known_reward_and_flipped_labels_flip_it(
    tiny_bert, tmp_path, quality_cache, loss
):
    held_out = quality_records("bt-margin", 200, seed=99, flipped=False)
    accuracies = {}
    for flipped in (False, True):
        records = quality_records(loss, 80 if loss == "plackett-luce" else 200, 1, flipped)
        assert choose_loss(records) == loss
        config = quick_config(tiny_bert, quality_cache, epochs=8, features="response", dropout=0.0)
        report = train_reward_model(
            records, config, tmp_path / f"flipped-{flipped}", log=lambda _: None
        )
        assert report.loss == loss
        accuracies[flipped] = pair_accuracy(report.model, held_out)
    # Chance is 0.5; both runs reach 1.0 and 0.0 on this data.
    assert accuracies[False] > 0.9 and accuracies[True] < 0.1, accuracies


def test_truncation_counts_and_drop(tiny_bert, tmp_path):
    records = keyword_pairs(20, seed=5)
    long_text = " ".join(["word"] * 40)
    records[0] = PairwiseRecord(
        id="long", prompt="p", response_a=long_text, response_b="short", outcome="a"
    )
    kept = train_reward_model(
        records,
        quick_config(tiny_bert, tmp_path, epochs=1, max_length=16),
        tmp_path / "t",
        log=lambda _: None,
    )
    assert (
        kept.stages["train"].truncation.responses_truncated == 1
        and kept.stages["train"].truncation.examples_kept == 20
    )
    dropped = train_reward_model(
        records,
        quick_config(tiny_bert, tmp_path, epochs=1, max_length=16, truncation="drop"),
        tmp_path / "d",
        log=lambda _: None,
    )
    assert (
        dropped.stages["train"].truncation.examples_dropped == 1
        and dropped.stages["train"].truncation.examples_kept == 19
    )
    saved = json.loads((tmp_path / "d" / "config.json").read_text())["training"]["truncation"]
    assert saved["examples_dropped"] == 1


def test_tokenize_pair_keeps_response_and_cuts_prompt_start(tiny_bert):
    from prefkit.rm.encoder import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    prompt = " ".join(f"p{i}" for i in range(30))
    tokenized = tokenize_pair(tokenizer, prompt, "the answer", max_length=12)
    assert (
        len(tokenized.input_ids) == 12
        and tokenized.prompt_truncated
        and not tokenized.response_truncated
    )
    text = tokenizer.decode(tokenized.input_ids)
    assert text.endswith("the answer [SEP]") and "p0 " not in text


def test_decoder_pooling_same_for_left_and_right_padding(tiny_llama):
    spec = RewardModelSpec(
        mode="finetune",
        backbone=BackboneSpec.from_checkpoint(tiny_llama),
        max_length=32,
        truncation="truncate",
        loss="bradley-terry",
    )
    assert spec.backbone.pooling == "last"
    model = TransformerRewardModel.create(spec).eval()
    sequences = [
        tokenize_pair(model.tokenizer, "prompt", text, 32).input_ids
        for text in ["short", "a much longer response with many words in it"]
    ]
    with torch.no_grad():
        right = model(pad_sequences(sequences, 0, "right"))
        left = model(pad_sequences(sequences, 0, "left"))
        alone = torch.cat([model(pad_sequences([ids], 0)) for ids in sequences])
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["lora", "finetune"])
def test_transformer_modes_save_and_reload_identically(tiny_llama, tmp_path, mode):
    records = keyword_pairs(32, seed=6)
    config = quick_config(tiny_llama, tmp_path, mode=mode, epochs=1, max_length=32, lr=1e-3)
    report = train_reward_model(records, config, tmp_path / mode, log=lambda _: None)
    prompts = [r.prompt for r in records[:6]]
    responses = [r.response_a for r in records[:6]]
    before = report.model.score(prompts, responses)
    loaded = RewardModel.load(tmp_path / mode)
    np.testing.assert_allclose(loaded.score(prompts, responses), before, rtol=0, atol=1e-6)
    # A head that was not saved would come back freshly initialised: scores would differ.
    assert np.ptp(before) > 0
    if mode == "lora":
        assert (tmp_path / mode / "adapter" / "adapter_model.safetensors").is_file()
        assert "head.weight" in load_file(tmp_path / mode / "model.safetensors")


class _Interrupt(Exception):
    pass


def test_interrupted_training_resumes_to_identical_weights(tiny_bert, tmp_path):
    records = keyword_pairs(64, seed=7)
    config = quick_config(tiny_bert, tmp_path, epochs=3)
    train_reward_model(records, config, tmp_path / "full", log=lambda _: None)

    def stop_in_second_epoch(event):
        if event.kind == "step" and event.global_step == 6:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_reward_model(
            records,
            config,
            tmp_path / "resumed",
            callbacks=[stop_in_second_epoch],
            log=lambda _: None,
        )
    resumed = train_reward_model(records, config, tmp_path / "resumed", log=lambda _: None)
    assert resumed.stages["train"].result.resumed_from is not None
    full_state = load_file(tmp_path / "full" / "model.safetensors")
    resumed_state = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in full_state.items():
        assert torch.equal(tensor, resumed_state[name]), name


def test_real_minilm_embeds_and_caches(tmp_path):
    backbone = default_backbone()
    encoder = FrozenEncoder(backbone, max_length=64)
    cache = EmbeddingCache(tmp_path / "cache")
    texts = ["Water is essential for life.", "Bottled water wastes plastic.", "I like turtles."]
    encoded = cache.encode(encoder, texts)
    assert encoded.embeddings.shape == (3, 384)
    similarity = encoded.embeddings @ encoded.embeddings.T
    norms = np.linalg.norm(encoded.embeddings, axis=1)
    cosine = similarity / np.outer(norms, norms)
    assert cosine[0, 1] > cosine[0, 2]  # related sentences are closer
    again = FrozenEncoder(backbone, max_length=64)
    np.testing.assert_array_equal(
        EmbeddingCache(tmp_path / "cache").encode(again, texts).embeddings, encoded.embeddings
    )
    assert again.calls == 0


# Fast paths against the plain versions: the encoder tokenizes each text once and
# truncates the ids itself; evaluation scores every item once, longest first.

ENCODER_TEXTS = [
    "short",
    "a somewhat longer text about the weather, which is mild today",
    " ".join(f"word{i}" for i in range(80)),  # far over max_length
    "",
    "another text, of middling length, with punctuation!",
]


def plain_encode(encoder: FrozenEncoder, texts: list[str], side: str) -> np.ndarray:
    tokenizer = encoder.tokenizer
    tokenizer.truncation_side = side
    rows = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(
                [text], truncation=True, max_length=encoder.max_length, return_tensors="pt"
            )
            hidden = encoder.model(**batch).last_hidden_state
            rows.append(
                pool_hidden_states(hidden, batch["attention_mask"], encoder.pooling)[0].numpy()
            )
    tokenizer.truncation_side = "right"
    return np.stack(rows)


@pytest.mark.parametrize("side", ["right", "left"])
def test_encoder_fast_path_matches_tokenizer_truncation(tiny_bert, side):
    encoder = FrozenEncoder(tiny_bert, max_length=24, batch_size=2)
    fast = encoder.encode(ENCODER_TEXTS, side=side)
    np.testing.assert_allclose(
        fast.embeddings, plain_encode(encoder, ENCODER_TEXTS, side), rtol=1e-5, atol=1e-5
    )
    expected_counts = [len(ids) for ids in encoder.tokenizer(ENCODER_TEXTS)["input_ids"]]
    assert fast.num_tokens.tolist() == expected_counts
    assert fast.num_tokens[2] > 24  # the long text was truncated, and counted before truncation


def test_encoder_runs_batches_side_by_side_on_cpu_and_matches_one_at_a_time(tiny_bert, monkeypatch):
    encoder = FrozenEncoder(tiny_bert, max_length=24, batch_size=2)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert encoder.cpu_workers(3) == (1, 1)
        serial = encoder.encode(ENCODER_TEXTS)
        torch.set_num_threads(2)
        assert encoder.cpu_workers(3) == (2, 1)
        assert encoder.cpu_workers(1) == (1, 2)  # one batch: intra-op threads instead
        torch.set_num_threads(16)
        assert encoder.cpu_workers(100) == (4, 4)  # at most 4 batches' activations at once
        torch.set_num_threads(2)
        assert encoder.encode([]).embeddings.shape == (0, encoder.hidden_size)
        seen = []
        original = FrozenEncoder._encode_batch

        def recording(self, item):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return original(self, item)

        monkeypatch.setattr(FrozenEncoder, "_encode_batch", recording)
        calls_before = encoder.calls
        parallel = encoder.encode(ENCODER_TEXTS)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
    assert len(seen) == 3 and encoder.calls == calls_before + 3
    assert all(name.startswith("prefkit-encode") and threads == 1 for name, threads in seen)
    np.testing.assert_allclose(parallel.embeddings, serial.embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(parallel.num_tokens, serial.num_tokens)
    np.testing.assert_allclose(
        parallel.embeddings, plain_encode(encoder, ENCODER_TEXTS, "right"), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["bert", "llama-base", "llama-causal-lm"])
def test_encoder_loads_the_same_model_as_from_pretrained(
    tiny_bert, tiny_llama, tmp_path, monkeypatch, kind
):
    from transformers import AutoModel, LlamaModel

    from prefkit.rm import encoder as encoder_module

    if kind == "bert":
        checkpoint = tiny_bert
    elif (
        kind == "llama-causal-lm"
    ):  # keys carry the "model." prefix: Hugging Face's loader maps them
        checkpoint = tiny_llama
    else:
        checkpoint = str(tmp_path / "llama-base")
        LlamaModel.from_pretrained(tiny_llama).save_pretrained(checkpoint, safe_serialization=True)
    calls = []
    original = AutoModel.from_pretrained
    monkeypatch.setattr(
        AutoModel, "from_pretrained", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    loaded = encoder_module.load_base_model(checkpoint).eval()
    assert len(calls) == (
        1 if kind == "llama-causal-lm" else 0
    )  # direct load for exact base-model keys
    reference = original(checkpoint, use_safetensors=True, dtype=torch.float32).eval()
    ours, theirs = dict(loaded.named_buffers()), dict(reference.named_buffers())
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)
    for (name, expected), actual in zip(
        reference.state_dict().items(), loaded.state_dict().values()
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).last_hidden_state,
            reference(input_ids=ids).last_hidden_state,
            rtol=0,
            atol=0,
        )


def test_embedding_progress_learns_its_total_before_the_first_batch(tiny_bert, tmp_path):
    from prefkit.progress import ProgressCounter

    events = []

    class Recorder(ProgressCounter):
        def expect(self, count):
            events.append(("expect", count))
            super().expect(count)

        def __call__(self, count):
            events.append(("done", count))
            super().__call__(count)

    encoder = FrozenEncoder(tiny_bert, max_length=24, batch_size=2)
    cache = EmbeddingCache(tmp_path / "cache")
    counter = Recorder("embedding", "text", enabled=False)
    cache.encode(encoder, ENCODER_TEXTS[:3], progress=counter)
    cache.encode(encoder, ENCODER_TEXTS, progress=counter)  # 3 cached, 2 to embed
    counter.close()
    assert events[0] == ("expect", 3) and events[3] == ("expect", 2)
    assert sum(n for kind, n in events if kind == "done") == 5
    assert counter._bar.total == 5


def test_models_whose_rotary_embedding_changes_during_forward_embed_one_batch_at_a_time(
    tiny_llama, tmp_path
):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama)
    config.rope_scaling = {"rope_type": "dynamic", "factor": 2.0}
    config.save_pretrained(tmp_path)
    for name in Path(tiny_llama).iterdir():
        if name.name != "config.json":
            shutil.copy(name, tmp_path / name.name)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert FrozenEncoder(str(tmp_path), max_length=24).cpu_workers(5) == (1, 2)
        assert FrozenEncoder(tiny_llama, max_length=24).cpu_workers(5) == (2, 1)
    finally:
        torch.set_num_threads(previous)


def test_parallel_encoding_keeps_order_and_pads_only_a_few_batches_ahead():
    from concurrent.futures import ThreadPoolExecutor

    from prefkit.rm.encoder import _bounded_map

    pulled = []

    def items():
        for number in range(20):
            pulled.append(number)
            yield number

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = _bounded_map(pool, lambda number: number * number, items(), 4)
        first = [next(results) for _ in range(3)]
        assert len(pulled) <= 3 + 4  # consumed plus at most 4 in flight
        rest = list(results)
    assert first + rest == [number * number for number in range(20)]


def test_evaluate_examples_matches_batchwise_forward(tiny_bert, tmp_path):
    records = keyword_pairs(37, seed=3)
    config = RMTrainConfig(
        mode="finetune",
        backbone=tiny_bert,
        max_length=32,
        train=default_train_config("finetune", progress=False, device="cpu"),
    )
    model = new_model(config, "bradley-terry", None)
    model.eval()
    index = ItemIndex()
    examples = build_examples(records, index, None)
    store, _, _ = build_store(model, index, config)

    fast = evaluate_examples(model, store, examples, "bradley-terry", batch_size=8)

    total_loss, correct = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), 5):
            batch = make_batch(store, examples, list(range(start, min(start + 5, len(examples)))))
            losses, metrics = example_losses(model, batch, "bradley-terry")
            total_loss += float(losses.sum())
            correct += float(metrics["accuracy"].sum())
    assert fast["loss"] == pytest.approx(total_loss / len(examples), rel=1e-5)
    assert fast["accuracy"] == pytest.approx(correct / len(examples), abs=1e-9)
