"""Adversarial training on word embeddings: FGM (Miyato et al. 2017) and PGD (Madry et al. 2018).

The perturbation is added to the output of the word-embedding layer through a forward hook, so it
works whether the embedding weights are trainable (full) or frozen (head, top-k, LoRA, IA3).
One training step = clean loss backward + adversarial loss backward; the gradients accumulate.
"""
from __future__ import annotations

import torch
from transformers import Trainer

from toolchain.core.config import AdversarialConfig


class EmbeddingPerturbation:
    """Adds ``delta`` to the word-embedding output; records the clean embedding-output gradient."""

    def __init__(self, model):
        self.delta: torch.Tensor | None = None
        self.capture = False
        self.handle = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.capture:
            self.delta = torch.zeros_like(output, requires_grad=True)
            return output + self.delta
        if self.delta is not None:
            return output + self.delta
        return output

    def remove(self) -> None:
        self.handle.remove()


def _normalized(grad: torch.Tensor) -> torch.Tensor:
    """Per-example L2 normalisation of a (batch, seq, hidden) gradient."""
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norm.view(-1, *([1] * (grad.dim() - 1)))


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = torch.clamp(epsilon / norm, max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


class AdversarialTrainer(Trainer):
    """Trainer whose training step adds an FGM or PGD adversarial loss on the word embeddings."""

    def __init__(self, *args, adversarial: AdversarialConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.adversarial = adversarial
        self._perturbation: EmbeddingPerturbation | None = None

    def _perturber(self, model) -> EmbeddingPerturbation:
        if self._perturbation is None:
            self._perturbation = EmbeddingPerturbation(self.accelerator.unwrap_model(model))
        return self._perturbation

    def training_step(self, model, inputs, num_items_in_batch=None):
        hook = self._perturber(model)
        hook.capture = True
        clean = super().training_step(model, inputs, num_items_in_batch)  # backward of the clean loss
        hook.capture = False
        grad = hook.delta.grad.detach() if hook.delta is not None and hook.delta.grad is not None else None
        if grad is None:
            hook.delta = None
            return clean
        cfg = self.adversarial
        if cfg.kind == "fgm":
            hook.delta = (cfg.epsilon * _normalized(grad)).detach()
        else:
            hook.delta = self._pgd_delta(model, inputs, grad)
        try:
            super().training_step(model, inputs, num_items_in_batch)  # backward of the adversarial loss
        finally:
            hook.delta = None
        return clean

    def _pgd_delta(self, model, inputs, grad: torch.Tensor) -> torch.Tensor:
        """K-1 ascent steps on delta alone (no parameter gradients), projected onto the epsilon ball."""
        cfg, hook = self.adversarial, self._perturbation
        delta = _project(cfg.alpha * _normalized(grad), cfg.epsilon)
        for _ in range(cfg.steps - 1):
            hook.delta = delta.detach().requires_grad_(True)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, self._prepare_inputs(inputs))
            step_grad, = torch.autograd.grad(loss, hook.delta)
            delta = _project(hook.delta.detach() + cfg.alpha * _normalized(step_grad), cfg.epsilon)
        return delta.detach()
