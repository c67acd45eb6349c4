"""The masked-LM loop of `toolchain pretrain`: Trainer subclass, arguments, artifacts."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from toolchain import __version__
from toolchain.core.artifacts import (ARTIFACT_VERSION, MANIFEST, mark_complete, mark_incomplete, replace_dir, write_json,
                                 write_yaml)
from toolchain.core.config import ConfigError, config_hash, to_dict
from toolchain.core.artifacts import sha256_file
from toolchain.pretrain import PretrainConfig
from toolchain.pretrain.corpus import (chunk_blocks, drop_excluded, masking_collator, read_corpora, split_documents,
                                      split_paths)
from toolchain.tasks.base import FeatureDataset


def keep_selected(selected: torch.Tensor):
    """A forward hook for the encoder: its hidden states at the ``selected`` positions only, as one sequence
    (1, n, hidden), so whatever masked-LM head the model declares after it runs on those alone."""
    def hook(module, args, output):
        hidden = output[0][selected].unsqueeze(0)
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output["last_hidden_state"] = hidden
        return output
    return hook


class MaskedLMTrainer(Trainer):
    """Scores only the masked positions: the vocabulary projection, the costliest part of an MLM step
    for a small encoder, runs on the ~15% selected tokens instead of every token. The model's own forward runs
    (its head, whatever its layout: BERT's cls, RoBERTa's lm_head, DistilBERT's vocab_* layers) on the encoder's
    output cut to those positions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # compute_loss normalises by the tokens of the whole accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        unwrapped = self.accelerator.unwrap_model(model)
        encoder = getattr(unwrapped, unwrapped.base_model_prefix)
        selected = labels != -100
        handle = encoder.register_forward_hook(keep_selected(selected))
        try:
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        finally:
            handle.remove()
        scores = logits[0].float()
        total = torch.nn.functional.cross_entropy(scores, labels[selected], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else selected.sum().clamp_min(1)
        loss = total / count
        return (loss, {"loss": loss}) if return_outputs else loss


def training_arguments(cfg: PretrainConfig, out: Path) -> TrainingArguments:
    from toolchain.core.hardware import precision_flags

    t, flags = cfg.train, precision_flags(cfg.train.precision)
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=t.max_steps, num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, lr_scheduler_type=t.scheduler, warmup_ratio=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm or 1e9, optim="adamw_torch", bf16=flags["bf16"], fp16=flags["fp16"],
        seed=t.seed, data_seed=t.seed, eval_strategy="steps", eval_steps=t.eval_steps, save_strategy="steps",
        save_steps=t.eval_steps, save_total_limit=t.save_total_limit, save_safetensors=True,
        logging_steps=t.logging_steps, logging_dir=str(out / "tensorboard"), report_to=["tensorboard"],
        dataloader_num_workers=t.num_workers, prediction_loss_only=True, remove_unused_columns=False,
        average_tokens_across_devices=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=False)


def corpus_blocks(cfg: PretrainConfig, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """Train and held-out blocks, and the corpus record for the manifest."""
    if not cfg.data.train:
        raise ConfigError("data.train: no corpus given; set data.train=PATH (one document a line)")
    paths = split_paths(cfg.data.train)
    documents, excluded = drop_excluded(read_corpora(cfg.data.train, cfg.data.max_documents), cfg.data.exclude)
    train_docs, dev_docs = split_documents(documents, cfg.data.dev_fraction, cfg.data.split_seed)
    words = cfg.masking.whole_word
    train = chunk_blocks(tokenizer, train_docs, cfg.data.max_length, cfg.data.min_block, words)
    dev = chunk_blocks(tokenizer, dev_docs, cfg.data.max_length, cfg.data.min_block, words)[: cfg.data.max_dev_blocks]
    record = {"path": ",".join(str(Path(p).resolve()) for p in paths), "sha256": ",".join(sha256_file(p) for p in paths),
              "excluded_documents": excluded, "exclude": cfg.data.exclude, "documents": len(documents),
              "train_documents": len(train_docs), "dev_documents": len(dev_docs),
              "train_blocks": len(train), "dev_blocks": len(dev),
              "train_tokens": sum(len(b["input_ids"]) for b in train)}
    return train, dev, record


def manifest(cfg: PretrainConfig, status: str, base_path: str, corpus: dict, extra: dict | None = None) -> dict:
    return {"artifact_version": ARTIFACT_VERSION, "stage": "pretrain", "status": status,
            "toolchain_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "base_model": base_path, "model_dir": "model", "config_hash": config_hash(cfg),
            "data_files": {"train": corpus}, **(extra or {}), "config": to_dict(cfg)}


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Continue masked-LM training of ``cfg.base`` on the corpus; returns the output dir (model/ inside)."""
    from transformers import AutoModelForMaskedLM, set_seed

    from toolchain.inference.modeling import load_pretrained, load_tokenizer, resolve_base_model
    from toolchain.core.run_dirs import prepare_run_dir

    out = prepare_run_dir(cfg, resume, overwrite)
    set_seed(cfg.train.seed)
    base_path = resolve_base_model(cfg.base)
    tokenizer = load_tokenizer(base_path)
    train_blocks, dev_blocks, corpus = corpus_blocks(cfg, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    mark_incomplete(out, f"pre-training in progress or interrupted; continue with: toolchain pretrain --resume {out}")
    write_yaml(out / MANIFEST, manifest(cfg, "incomplete", base_path, corpus))
    trainer = MaskedLMTrainer(
        model=load_pretrained(AutoModelForMaskedLM, base_path), args=training_arguments(cfg, out),
        train_dataset=FeatureDataset(train_blocks), eval_dataset=FeatureDataset(dev_blocks) if dev_blocks else None,
        data_collator=masking_collator(tokenizer, cfg.masking.probability, cfg.masking.whole_word, cfg.train.seed),
        processing_class=tokenizer)
    before = trainer.evaluate() if dev_blocks and not resume else {}
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    after = trainer.evaluate() if dev_blocks else {}
    metrics = {"dev": {"before": loss_and_perplexity(before), "after": loss_and_perplexity(after)},
               "train": {**result.metrics, "wall_seconds": time.time() - started,
                         "global_step": trainer.state.global_step,
                         "blocks_seen": trainer.state.global_step * cfg.train.batch_size * cfg.train.gradient_accumulation},
               "data": corpus, "masking": to_dict(cfg.masking)}
    write_artifacts(out, trainer, tokenizer, metrics)
    write_yaml(out / MANIFEST, manifest(cfg, "complete", base_path, corpus, {"metrics": metrics["dev"]}))
    mark_complete(out)
    print_summary(out, metrics)
    return out


def loss_and_perplexity(values: dict) -> dict:
    loss = values.get("eval_loss")
    return {"loss": loss, "perplexity": math.exp(loss) if loss is not None and loss < 50 else None}


def write_artifacts(out: Path, trainer, tokenizer, metrics: dict) -> None:
    """The model (written to model.tmp/, then renamed), metrics, history and loss curves."""
    from toolchain.core.report import plot_curves

    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out / "model")
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", trainer.state.log_history)
    plot_curves(trainer.state.log_history, out / "curves.png")


def print_summary(out: Path, metrics: dict) -> None:
    from toolchain.core.report import format_table

    rows = [[when, "-" if v["loss"] is None else v["loss"], "-" if v["perplexity"] is None else v["perplexity"]]
            for when, v in metrics["dev"].items()]
    print(format_table(["held-out masked-LM", "loss", "perplexity"], rows))
    train = metrics["train"]
    print(f"steps={train['global_step']} blocks seen={train['blocks_seen']:,} of {metrics['data']['train_blocks']:,} "
          f"wall={train['wall_seconds']:.0f}s")
    print(f"new base model: {out / 'model'}  (toolchain train --config PRESET model.base={out / 'model'})")
