"""Structured pruning: remove whole attention heads and FFN neurons, physically shrinking the matrices.

Importance is first-order Taylor (Michel et al. 2019): for a head or neuron with output ``a`` and loss
gradient ``g``, |sum(a * g)| per example, summed over the dev data; it estimates how much the loss
moves if the unit is removed. Each layer loses the same share of its lowest-scoring units (at least
one head is kept per layer).

Reloading: heads removed with ``prune_heads`` are recorded in ``config.pruned_heads`` and replayed by
``from_config``; FFN widths are not representable in a BERT config (one ``intermediate_size``), so
``pruning.json`` stores each layer's width and :func:`load_pruned` rebuilds the shapes before loading
the safetensors weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from toolchain.inference.architecture import encoder_layers

PRUNING_FILE = "pruning.json"


def _blocks(layer) -> tuple:
    """(attention output projection, FFN input projection, FFN output projection) of a BERT-style block."""
    return layer.attention.output.dense, layer.intermediate.dense, layer.output.dense


def _capture_inputs(module, store: list) -> torch.utils.hooks.RemovableHandle:
    """Keep the input of ``module`` with its gradient retained (the per-unit activations we score)."""
    def hook(_module, args):
        args[0].retain_grad()
        store.append(args[0])
    return module.register_forward_pre_hook(hook)


def importance_scores(model, batches) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Taylor importance of every head (layers x heads) and FFN neuron (per layer) over labelled batches."""
    layers = encoder_layers(model)
    heads = model.config.num_attention_heads
    head_scores = torch.zeros(len(layers), heads)
    ffn_scores = [torch.zeros(_blocks(layer)[1].out_features) for layer in layers]
    model.eval()
    for batch in batches:
        contexts, hidden = [[] for _ in layers], [[] for _ in layers]
        handles = [_capture_inputs(_blocks(layer)[0], contexts[i]) for i, layer in enumerate(layers)]
        handles += [_capture_inputs(_blocks(layer)[2], hidden[i]) for i, layer in enumerate(layers)]
        model.zero_grad()
        model(**batch).loss.backward()
        for handle in handles:
            handle.remove()
        for i in range(len(layers)):
            ctx, neurons = contexts[i][0], hidden[i][0]
            per_head = (ctx * ctx.grad).reshape(ctx.shape[0], ctx.shape[1], heads, -1).sum(dim=(1, 3))
            head_scores[i] += per_head.abs().sum(dim=0).detach()
            ffn_scores[i] += (neurons * neurons.grad).sum(dim=1).abs().sum(dim=0).detach()
    model.zero_grad()
    return head_scores, ffn_scores


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    return sorted(torch.argsort(scores)[:count].tolist())


def prune_model(model, head_scores, ffn_scores, amount: float, heads: bool = True, ffn: bool = True) -> dict:
    """Remove ``amount`` of each layer's heads and FFN neurons in place; returns the pruning plan."""
    from transformers.pytorch_utils import prune_linear_layer

    layers = encoder_layers(model)
    n_heads = head_scores.shape[1]
    plan = {"amount": amount, "heads_before": n_heads * len(layers),
            "intermediate_before": [_blocks(layer)[1].out_features for layer in layers]}
    if heads:
        per_layer = min(n_heads - 1, round(amount * n_heads))
        model.prune_heads({i: lowest(head_scores[i], per_layer) for i in range(len(layers)) if per_layer})
    for i, layer in enumerate(layers):
        if not ffn:
            break
        width = ffn_scores[i].numel()
        keep = torch.tensor(sorted(set(range(width)) - set(lowest(ffn_scores[i], round(amount * width)))))
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    plan["pruned_heads"] = {str(k): sorted(v) for k, v in model.config.pruned_heads.items()}
    plan["heads_after"] = plan["heads_before"] - sum(len(v) for v in plan["pruned_heads"].values())
    plan["intermediate_sizes"] = [_blocks(layer)[1].out_features for layer in layers]
    return plan


def save_pruned(model, plan: dict, out_dir: Path) -> None:
    """safetensors weights + config.json (pruned_heads) + pruning.json (FFN widths): all a reload needs."""
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / PRUNING_FILE).write_text(json.dumps(plan, indent=2) + "\n")


def load_pruned(model_dir: str | Path, task):
    """Rebuild a pruned model from :func:`save_pruned` output (no pickle: safetensors + JSON)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    plan = json.loads((model_dir / PRUNING_FILE).read_text())
    config = AutoConfig.from_pretrained(model_dir)
    model = task.auto_model_class().from_config(config)  # replays config.pruned_heads
    for layer, width in zip(encoder_layers(model), plan["intermediate_sizes"]):
        hidden = layer.intermediate.dense.in_features
        layer.intermediate.dense = torch.nn.Linear(hidden, width)
        layer.output.dense = torch.nn.Linear(width, hidden)
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=True)
    return model.eval()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_and_recover(job) -> tuple[object, dict]:
    """Copy the merged model, score units on dev, prune, then recover on train (distill or fine-tune)."""
    import copy

    from toolchain.export.recovery import labelled_batches, recover

    cfg, run = job.cfg.prune, job.run
    dev = job.splits.dev[: cfg.importance_samples or None]
    student = copy.deepcopy(job.model)
    student.requires_grad_(True)  # a merged PEFT model comes back with frozen base weights
    batches = labelled_batches(job.task, job.tokenizer, dev, run.labels, run.max_length, cfg.batch_size)
    head_scores, ffn_scores = importance_scores(student, batches)
    before = parameter_count(student)
    plan = prune_model(student, head_scores, ffn_scores, cfg.amount, cfg.heads, cfg.ffn)
    plan.update(parameters_before=before, parameters_after=parameter_count(student),
                importance="taylor (Michel et al. 2019), dev split", importance_examples=len(dev))
    plan["recovery"] = recover(job, student)
    return student.cpu().eval(), plan  # the Trainer may have moved it to the GPU; export and parity run on the CPU
