"""Hugging Face scorers on tiny random models saved to a temporary folder, checked against
log-probs and logits computed directly, one item at a time, without padding."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from prefkit.data.records import Message
from prefkit.eval.scorers import (
    ImplicitRewardScorer,
    LengthScorer,
    ScorerError,
    SequenceClassifierScorer,
    load_scorer,
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "Name a primary colour. Red is a primary colour, and so are blue and yellow.",
    "user: assistant: Question: Answer:",
]
PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Name a colour.",
    "",
]
RESPONSES = [" Paris.", " A spider has eight legs, I think.", " Red", " blue and yellow"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few sentences (merges cross word parts)
    that adds BOS to a plain encode."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS, trainer)
    # Like Llama's tokenizer, a plain encode puts BOS first.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_config(tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def save_causal_lm(folder: Path, seed: int, chat_template: str | None = None) -> Path:
    tokenizer = build_tokenizer(chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def policy_folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("policies")
    return save_causal_lm(root / "policy", 0), save_causal_lm(root / "reference", 1)


@functools.cache
def load_causal_lm(folder: Path) -> tuple[PreTrainedTokenizerFast, LlamaForCausalLM]:
    return PreTrainedTokenizerFast.from_pretrained(folder), LlamaForCausalLM.from_pretrained(
        folder
    ).eval()


def direct_token_logps(
    folder: Path, prompt: str, response: str, max_length: int | None = None
) -> torch.Tensor:
    """Log-probs of the response tokens (EOS included), one unpadded sequence at a time.

    The sequence is <s> + tokens(prompt) + response tokens + </s>, where the response tokens
    are the rest of tokens(prompt + response) when tokens(prompt) is its prefix, else
    tokens(response) (a merge across the seam). With ``max_length``, the documented cut:
    <s> and the prompt's last ``max_length // 2 - 1`` tokens, then the response tokens (EOS
    included) that fit in the rest, from its start.
    """
    tokenizer, model = load_causal_lm(folder)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids) :]
    else:
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids = [*response_ids, tokenizer.eos_token_id]
    if max_length is not None:
        prompt_ids = prompt_ids[len(prompt_ids) - min(len(prompt_ids), max_length // 2 - 1) :]
        response_ids = response_ids[: max_length - 1 - len(prompt_ids)]
    ids = [tokenizer.bos_token_id, *prompt_ids, *response_ids]
    start = 1 + len(prompt_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(
            model(torch.tensor([ids])).logits[0].double(), dim=-1
        )  # (T, V)
    return torch.stack([log_probs[t - 1, ids[t]] for t in range(start, len(ids))])


@pytest.mark.parametrize("reward", ["sum", "mean", "norm"])
def test_reference_free_rewards_match_direct_log_probs(policy_folders, reward: str) -> None:
    policy, _ = policy_folders
    scorer = ImplicitRewardScorer(policy, reward=reward, batch_size=3, device="cpu", progress=False)
    rewards = scorer.score(PROMPTS, RESPONSES)
    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        token_logps = direct_token_logps(policy, prompt, response)
        expected.append(
            {
                "sum": token_logps.sum(),
                "mean": token_logps.mean(),
                "norm": -token_logps.pow(2).sum().sqrt(),
            }[reward].item()
        )
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)


def test_dpo_reward_is_the_log_ratio_and_batching_does_not_change_it(policy_folders) -> None:
    policy, reference = policy_folders
    expected = [
        (direct_token_logps(policy, p, r).sum() - direct_token_logps(reference, p, r).sum()).item()
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    one_by_one = ImplicitRewardScorer(
        policy, reference=reference, batch_size=1, device="cpu", progress=False
    )
    batched = ImplicitRewardScorer(
        policy, reference=reference, batch_size=4, device="cpu", progress=False
    )
    assert one_by_one.reward == "dpo"
    # Each side sums ~10 float32 log-probs of about -5.6, so the difference carries ~1e-5 of
    # rounding from sums near -60; the direct computation is in float64 from the same logits.
    unbatched = one_by_one.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(unbatched, expected, atol=1e-4)
    np.testing.assert_allclose(batched.score(PROMPTS, RESPONSES), unbatched, atol=1e-4)


def test_policy_needs_a_reference_or_a_reference_free_reward(policy_folders) -> None:
    policy, reference = policy_folders
    with pytest.raises(ScorerError, match="--ref PATH.*--implicit-reward"):
        load_scorer(str(policy), device="cpu")
    with pytest.raises(ScorerError, match="reference-free; drop --ref"):
        load_scorer(str(policy), reference=str(reference), implicit_reward="mean", device="cpu")
    scorer = load_scorer(str(policy), implicit_reward="norm", device="cpu", progress=False)
    assert isinstance(scorer, ImplicitRewardScorer) and scorer.name == f"{policy} (norm)"


def test_truncation_keeps_the_prompt_end_and_the_response_start(policy_folders) -> None:
    policy, _ = policy_folders
    tokenizer, _ = load_causal_lm(policy)
    prompts = [*PROMPTS, "Name a colour."]
    responses = [*RESPONSES, " A spider has eight legs, I think."]  # both sides cut
    scorer = ImplicitRewardScorer(policy, reward="sum", max_length=8, device="cpu", progress=False)
    rewards = scorer.score(prompts, responses)
    expected = [
        direct_token_logps(policy, prompt, response, max_length=8).sum().item()
        for prompt, response in zip(prompts, responses)
    ]
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)
    # The cuts are real on both sides, and counted: prompts over 3 tokens, and responses
    # that do not fit beside their (cut) prompt.
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    cut_prompts = sum(length > 3 for length in prompt_lengths)
    assert 0 < cut_prompts < len(prompts)
    assert f"prompt truncated in {cut_prompts} " in scorer.notes[-1], scorer.notes
    assert "completion truncated in 0 " not in scorer.notes[-1] and "(norm)" not in scorer.name
    # Without the cut the same items score differently (the check above can tell them apart).
    full = ImplicitRewardScorer(policy, reward="sum", device="cpu", progress=False)
    assert not np.allclose(full.score(prompts, responses), rewards, atol=1e-3)


def test_chat_template_turns_plain_texts_into_turns() -> None:
    from prefkit.align.tokenize import TokenizeConfig, encode_completion
    from prefkit.eval.scorers import _as_conversation

    tokenizer = build_tokenizer(CHAT_TEMPLATE)
    item = encode_completion(
        tokenizer, *_as_conversation(tokenizer, "Name a colour.", " Red"), TokenizeConfig()
    )
    assert tokenizer.decode(item.prompt_ids) == "<s><|user|>Name a colour.\n<|assistant|>"
    assert tokenizer.decode(item.completion_ids) == " Red\n</s>"
    plain = build_tokenizer()
    assert _as_conversation(plain, "Name a colour.", " Red") == ("Name a colour.", " Red")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = build_tokenizer(CHAT_TEMPLATE)
    torch.manual_seed(2)
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sequence_classifier_matches_direct_logits(classifier_folder: Path) -> None:
    scorer = load_scorer(str(classifier_folder), batch_size=3, device="cpu", progress=False)
    assert isinstance(scorer, SequenceClassifierScorer) and scorer.uses_chat_template
    prompts = [*PROMPTS[:3], (Message("system", "Be brief."), Message("user", "Colour?"))]
    rewards = scorer.score(prompts, RESPONSES)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(classifier_folder)
    model = LlamaForSequenceClassification.from_pretrained(classifier_folder).eval()
    expected = []
    for prompt, response in zip(prompts, RESPONSES):
        turns = (
            [{"role": "user", "content": prompt}]
            if isinstance(prompt, str)
            else [message.to_dict() for message in prompt]
        )
        text = tokenizer.apply_chat_template(
            [*turns, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected.append(model(torch.tensor([ids])).logits[0, 0].item())
    assert text.startswith("<|system|>Be brief.\n<|user|>Colour?\n<|assistant|> blue and yellow")
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)


def test_classifier_folder_checks(classifier_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="apply to policies"):
        load_scorer(str(classifier_folder), reference=str(classifier_folder))
    # A classifier with two labels is not a reward model.
    tokenizer = build_tokenizer()
    two_labels = tmp_path / "two"
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=2)).save_pretrained(two_labels)
    tokenizer.save_pretrained(two_labels)
    with pytest.raises(ScorerError, match="num_labels = 2"):
        load_scorer(str(two_labels))
    # A folder with pickled weights only (a stand-in file: it must be refused unread).
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for item in classifier_folder.iterdir():
        if item.suffix != ".safetensors":
            (pickled / item.name).write_bytes(item.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ScorerError, match=r"no .safetensors weights \(found pytorch_model.bin\)"):
        load_scorer(str(pickled), device="cpu")


def test_load_scorer_words_and_errors(tmp_path: Path) -> None:
    assert isinstance(load_scorer("length"), LengthScorer)
    with pytest.raises(ScorerError, match="no such folder"):
        load_scorer(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ScorerError, match="not a file"):
        load_scorer(str(tmp_path / "weights.bin"))
