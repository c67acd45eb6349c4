"""Structured pruning: remove whole attention heads and FFN neurons, physically shrinking the matrices.

Importance is first-order Taylor (Michel et al. 2019): for a head or neuron with output ``a`` and loss
gradient ``g``, |sum(a * g)| per example, summed over the dev data; it estimates how much the loss
moves if the unit is removed. Each layer loses the same share of its lowest-scoring units (at least
one head is kept per layer).

The parts of each block are found by :func:`toolchain.inference.architecture.block_parts` from what the model
declares, so every family with that block layout prunes alike (BERT, RoBERTa, DistilBERT, MPNet, DeBERTa-v2);
another layout is refused before any work. A head is removed by dropping its rows from the projections into
head space and its columns from the projection back; an input that a block receives per head from outside it
(MPNet's shared relative-position bias) is narrowed to the kept heads by a forward pre-hook, which the ONNX
export traces into the graph.

Reloading: ``pruning.json`` stores each layer's removed heads and FFN width, and :func:`load_pruned` rebuilds
the shapes before loading the safetensors weights (a pruned export written by an earlier release, with
``config.pruned_heads``, reloads as before).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from toolchain.inference.architecture import BlockParts, block_parts

PRUNING_FILE = "pruning.json"
# attention type -> (position, name) of an argument carrying one slice per head from outside the block
PER_HEAD_INPUTS = {"MPNetSelfAttention": (3, "position_bias")}


def _capture_inputs(module, store: list) -> torch.utils.hooks.RemovableHandle:
    """Keep the input of ``module`` with its gradient retained (the per-unit activations we score)."""
    def hook(_module, args):
        args[0].retain_grad()
        store.append(args[0])
    return module.register_forward_pre_hook(hook)


def importance_scores(model, batches) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Taylor importance of every head (layers x heads) and FFN neuron (per layer) over labelled batches."""
    parts = block_parts(model)
    heads = parts[0].head_count
    head_scores = torch.zeros(len(parts), heads)
    ffn_scores = [torch.zeros(part.ffn_in.linear.out_features) for part in parts]
    model.eval()
    for batch in batches:
        contexts, hidden = [[] for _ in parts], [[] for _ in parts]
        handles = [_capture_inputs(part.from_heads.linear, contexts[i]) for i, part in enumerate(parts)]
        handles += [_capture_inputs(part.ffn_out.linear, hidden[i]) for i, part in enumerate(parts)]
        model.zero_grad()
        model(**batch).loss.backward()
        for handle in handles:
            handle.remove()
        for i in range(len(parts)):
            ctx, neurons = contexts[i][0], hidden[i][0]
            per_head = (ctx * ctx.grad).reshape(ctx.shape[0], ctx.shape[1], heads, -1).sum(dim=(1, 3))
            head_scores[i] += per_head.abs().sum(dim=0).detach()
            ffn_scores[i] += (neurons * neurons.grad).sum(dim=1).abs().sum(dim=0).detach()
    model.zero_grad()
    return head_scores, ffn_scores


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    return sorted(torch.argsort(scores)[:count].tolist())


def remove_heads(part: BlockParts, removed: list[int]) -> None:
    """Drop heads ``removed`` (indices of the unpruned block) from one block, in place."""
    from transformers.pytorch_utils import prune_linear_layer

    size, kept = part.head_size_before, [h for h in range(part.head_count) if h not in removed]
    index = torch.tensor([h * size + d for h in kept for d in range(size)], dtype=torch.long)
    for slot in part.into_heads:
        slot.replace(prune_linear_layer(slot.linear, index, dim=0))
    part.from_heads.replace(prune_linear_layer(part.from_heads.linear, index, dim=1))
    part.set_head_count(len(kept))
    narrow_per_head_inputs(part.heads, kept)


def narrow_per_head_inputs(attention, kept: list[int]) -> None:
    """An input given per head from outside the block (MPNet's position bias) keeps the kept heads' slices."""
    spec = PER_HEAD_INPUTS.get(type(attention).__name__)
    if spec is None:
        return
    position, name = spec
    index = torch.tensor(kept, dtype=torch.long)

    def narrow(_module, args, kwargs):
        if len(args) > position and args[position] is not None:
            args = (*args[:position], args[position].index_select(1, index), *args[position + 1:])
        elif kwargs.get(name) is not None:
            kwargs = {**kwargs, name: kwargs[name].index_select(1, index)}
        return args, kwargs
    attention.register_forward_pre_hook(narrow, with_kwargs=True)


def keep_neurons(part: BlockParts, keep: torch.Tensor) -> None:
    """Keep only FFN neurons ``keep`` of one block, in place."""
    from transformers.pytorch_utils import prune_linear_layer

    part.ffn_in.replace(prune_linear_layer(part.ffn_in.linear, keep, dim=0))
    part.ffn_out.replace(prune_linear_layer(part.ffn_out.linear, keep, dim=1))


def prune_model(model, head_scores, ffn_scores, amount: float, heads: bool = True, ffn: bool = True) -> dict:
    """Remove ``amount`` of each layer's heads and FFN neurons in place; returns the pruning plan."""
    parts = block_parts(model)
    n_heads = head_scores.shape[1]
    plan = {"amount": amount, "heads_before": n_heads * len(parts),
            "intermediate_before": [part.ffn_in.linear.out_features for part in parts], "pruned_heads": {}}
    per_layer = min(n_heads - 1, round(amount * n_heads)) if heads else 0
    for i, part in enumerate(parts):
        if per_layer:
            plan["pruned_heads"][str(i)] = lowest(head_scores[i], per_layer)
            remove_heads(part, plan["pruned_heads"][str(i)])
        if ffn:
            width = ffn_scores[i].numel()
            removed = set(lowest(ffn_scores[i], round(amount * width)))
            keep_neurons(part, torch.tensor(sorted(set(range(width)) - removed)))
    plan["heads_after"] = plan["heads_before"] - sum(len(v) for v in plan["pruned_heads"].values())
    plan["intermediate_sizes"] = [part.ffn_in.linear.out_features for part in parts]
    return plan


def save_pruned(model, plan: dict, out_dir: Path) -> None:
    """safetensors weights + config.json + pruning.json (removed heads, FFN widths): all a reload needs."""
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / PRUNING_FILE).write_text(json.dumps(plan, indent=2) + "\n")


def load_pruned(model_dir: str | Path, task):
    """Rebuild a pruned model from :func:`save_pruned` output (no pickle: safetensors + JSON)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    plan = json.loads((model_dir / PRUNING_FILE).read_text())
    config = AutoConfig.from_pretrained(model_dir)
    model = task.auto_model_class().from_config(config)  # an earlier release's config.pruned_heads is replayed here
    for i, (part, width) in enumerate(zip(block_parts(model), plan["intermediate_sizes"])):
        if not config.pruned_heads and plan.get("pruned_heads", {}).get(str(i)):
            remove_heads(part, plan["pruned_heads"][str(i)])
        keep_neurons(part, torch.arange(width))
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


def check_prunable(run) -> None:
    """Refuse, before any work, a run whose architecture pruning cannot handle (the model is built on the meta
    device from its config: no weights are read)."""
    from transformers import AutoConfig

    from toolchain.tasks import get_task

    config = AutoConfig.from_pretrained(run.base_model if run.is_peft else str(run.model_dir))
    with torch.device("meta"):
        model = get_task(run.task).auto_model_class().from_config(config)
    block_parts(model)
