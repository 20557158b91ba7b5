"""A Hugging Face backbone with a linear head, fine-tuned whole or with LoRA (modes
``finetune`` and ``lora``), and the tokenization of one (prompt, response) item."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefkit.rm.encoder import (
    load_tokenizer,
    pool_hidden_states,
    special_token_template,
    weights_hash,
)
from prefkit.rm.model import Items, RewardModel, TokenItems, TokenStore
from prefkit.rm.spec import RewardModelSpec


class TransformerRewardModel(RewardModel):
    """A Hugging Face backbone (fine-tuned whole, or with LoRA) pooled into a linear head."""

    def __init__(self, spec: RewardModelSpec, backbone: nn.Module, tokenizer: Any):
        super().__init__(spec)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = spec.backbone.pooling
        self.head = nn.Linear(spec.embedding_dim, self.num_outputs)

    @classmethod
    def create(cls, spec: RewardModelSpec) -> TransformerRewardModel:
        """A fresh model from ``spec.backbone.path``, with LoRA adapters when ``spec.lora`` is set."""
        from transformers import AutoModel

        path = spec.backbone.path
        lora = spec.lora
        backbone = AutoModel.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
        )
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(
                backbone,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules)
                    if lora.target_modules
                    else "all-linear",
                ),
            )
        return cls(spec, backbone, load_tokenizer(path))

    @classmethod
    def from_folder(cls, spec, folder, *, device="cpu", cache_dir=None):
        from transformers import AutoModel

        if spec.mode == "finetune":
            backbone = AutoModel.from_pretrained(
                folder / "backbone",
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch.float32,
            )
            tokenizer = load_tokenizer(str(folder / "backbone"))
        else:
            from peft import PeftModel

            base_path = spec.backbone.path
            found = weights_hash(base_path)
            if found != spec.backbone.weights_hash:
                raise ValueError(
                    f"base backbone {base_path}: weights changed since the LoRA adapter was trained "
                    f"(hash {found[:12]}..., expected {spec.backbone.weights_hash[:12]}...)."
                )
            base = AutoModel.from_pretrained(
                base_path, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
            )
            backbone = PeftModel.from_pretrained(base, folder / "adapter")
            tokenizer = load_tokenizer(str(folder / "tokenizer"))
        return cls(spec, backbone, tokenizer)

    def _save_extra(self, folder: Path) -> None:
        if self.spec.mode == "finetune":
            self.backbone.save_pretrained(folder / "backbone", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "backbone")
        else:
            self.backbone.save_pretrained(folder / "adapter", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "tokenizer")

    def forward(self, items: Items) -> torch.Tensor:
        assert isinstance(items, TokenItems)
        mask = items.attention_mask
        # Positions count real tokens only, so left and right padding give the same positions.
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (M, T)
        outputs = self.backbone(
            input_ids=items.input_ids, attention_mask=mask, position_ids=position_ids
        )
        pooled = pool_hidden_states(outputs.last_hidden_state, mask, self.pooling)  # (M, H)
        return self.head(pooled.float())

    def item_store(self, prompts, responses, progress=None):
        sequences = [
            tokenize_pair(self.tokenizer, prompt, response, self.spec.max_length).input_ids
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return TokenStore(sequences, self.tokenizer.pad_token_id, self.tokenizer.padding_side)


@dataclass
class TokenizedPair:
    input_ids: list[int]
    prompt_truncated: bool
    response_truncated: bool
    full_length: int
    """Length before truncation."""


def tokenize_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> TokenizedPair:
    """prompt + response with the tokenizer's special tokens, at most ``max_length`` ids.

    Too long: the prompt loses tokens from its start (the response is kept); a
    response that does not fit on its own is cut at its end. An empty prompt
    gives the single-text layout.
    """
    template = special_token_template(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    pair_specials = sum(len(part) for part in template.pair)
    single_specials = sum(len(part) for part in template.single)
    full_length = len(response_ids) + (
        len(prompt_ids) + pair_specials if prompt_ids else single_specials
    )
    prompt_truncated = response_truncated = False
    if full_length > max_length:
        if len(response_ids) + pair_specials >= max_length or not prompt_ids:
            prompt_truncated = bool(prompt_ids)
            prompt_ids = []
            if len(response_ids) + single_specials > max_length:
                response_ids = response_ids[: max_length - single_specials]
                response_truncated = True
        else:
            keep = max_length - pair_specials - len(response_ids)
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
            prompt_truncated = True
    if prompt_ids:
        before, between, after = template.pair
        ids = [*before, *prompt_ids, *between, *response_ids, *after]
    else:
        before, after = template.single
        ids = [*before, *response_ids, *after]
    return TokenizedPair(ids, prompt_truncated, response_truncated, full_length)
