"""Offline text augmentation of the training split: the EDA operations and masked-LM word replacement.

``augment.method`` (config section ``augment``):

- ``eda``: for each copy one operation drawn at random: *swap* two words, *delete* words (each with
  probability ``augment.p``, at least one word kept), or *insert* a copy of one of the sentence's own
  words at a random position (EDA's insertion draws synonyms from WordNet, which needs a download; the
  sentence's own words keep it offline);
- ``mlm``: contextual replacement: ``augment.p`` of the words (at least one) are masked together and each
  is replaced by a sample from the top ``augment.top_k`` word pieces of a model with a masked-LM head
  (``augment.mlm_model``: a ``toolchain pretrain`` output or any Hugging Face masked-LM directory), never
  by the word itself; words with digits are kept (amounts and dates carry the facts);
- ``eda+mlm``: half the copies of each kind.

Every training example gets ``augment.copies`` augmented copies (dev and test are never augmented), drawn
from a generator seeded by ``augment.seed`` (default: the run's seed), so a run is reproducible.
Token-classification data is not augmented (word edits would move the tags).
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from toolchain.data.readers import Example

METHODS = ("none", "eda", "mlm", "eda+mlm")
KEEP = re.compile(r"\d")   # words with digits are never replaced by the masked LM


def eda_swap(words: list[str], rng: random.Random, p: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(p * len(words)))):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def eda_delete(words: list[str], rng: random.Random, p: float) -> list[str]:
    if len(words) == 1:
        return list(words)
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def eda_insert(words: list[str], rng: random.Random, p: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(p * len(words)))):
        out.insert(rng.randrange(len(out) + 1), rng.choice(words))
    return out


EDA_OPERATIONS = (eda_swap, eda_delete, eda_insert)


def eda(text: str, rng: random.Random, p: float) -> str:
    words = text.split()
    if not words:
        return text
    return " ".join(rng.choice(EDA_OPERATIONS)(words, rng, p))


class MaskedLMReplacer:
    """Replaces words by a masked LM's samples (whole words masked by their first piece)."""

    def __init__(self, model_dir: str, top_k: int):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from toolchain.core.config import ConfigError

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model, info = AutoModelForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
        missing = [k for k in info.get("missing_keys", []) if "predictions" in k or k.startswith("cls.")]
        if missing:
            raise ConfigError(f"augment.mlm_model: {model_dir} has no masked-LM head ({missing[0]} missing); give a "
                              f"`toolchain pretrain` output or another masked-LM model directory")
        self.model = model.eval()
        self.top_k = top_k

    def __call__(self, text: str, rng: random.Random, p: float) -> str:
        import torch

        words = text.split()
        candidates = [i for i, w in enumerate(words) if not KEEP.search(w) and any(c.isalpha() for c in w)]
        if not candidates:
            return text
        chosen = sorted(rng.sample(candidates, max(1, min(len(candidates), round(p * len(words))))))
        masked = [self.tokenizer.mask_token if i in chosen else w for i, w in enumerate(words)]
        encoded = self.tokenizer(" ".join(masked), return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            logits = self.model(**encoded).logits[0]
        positions = (encoded["input_ids"][0] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
        for index, position in zip(chosen, positions):
            words[index] = self.sample(logits[position], words[index], rng)
        return " ".join(words)

    def sample(self, logits, original: str, rng: random.Random) -> str:
        ranked = logits.topk(self.top_k + 8).indices.tolist()
        options = [t for t in (self.tokenizer.convert_ids_to_tokens(i) for i in ranked)
                   if t.isalpha() and t.lower() != original.lower().strip(".,;:!?")][: self.top_k]
        return rng.choice(options) if options else original


def augment_examples(examples: list[Example], cfg, seed: int) -> list[Example]:
    """``cfg.copies`` augmented copies of each example (``cfg``: the ``augment`` config section)."""
    if cfg.method == "none" or cfg.copies == 0:
        return []
    rng = random.Random(seed)
    mlm = MaskedLMReplacer(cfg.mlm_model, cfg.top_k) if "mlm" in cfg.method else None
    kinds = {"eda": ["eda"], "mlm": ["mlm"], "eda+mlm": ["eda", "mlm"]}[cfg.method]
    out = []
    for example in examples:
        for copy in range(cfg.copies):
            kind = kinds[copy % len(kinds)]
            text = eda(example.text, rng, cfg.p) if kind == "eda" else mlm(example.text, rng, cfg.p)
            out.append(replace(example, text=text, location=f"{example.location}+{kind}{copy + 1}"))
    return out


def with_augmented_train(splits, cfg, task: str, seed: int):
    """The splits with augmented copies added to train (the original examples first)."""
    from toolchain.core.config import ConfigError

    if cfg.method == "none":
        return splits
    if task != "sequence-classification":
        raise ConfigError(f"augment.method={cfg.method}: augmentation is for sequence classification, not {task}")
    extra = augment_examples(splits.train, cfg, seed)
    files = {**splits.files, "augment": {"method": cfg.method, "copies": cfg.copies, "p": cfg.p,
                                         "examples": len(extra), "seed": seed, "mlm_model": cfg.mlm_model}}
    return replace(splits, train=splits.train + extra, files=files)
