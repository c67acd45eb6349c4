"""Trainer callbacks: AdaLoRA's budget schedule and a run-dir status marker."""
from __future__ import annotations

from transformers import TrainerCallback


class AdaLoraBudgetCallback(TrainerCallback):
    """Drives AdaLoRA's rank allocation: ``update_and_allocate`` after every optimizer step.

    It must run after ``optimizer.step()`` and before gradients are zeroed; the Trainer's
    ``on_optimizer_step`` event is exactly there. The rank budget history is kept for the run dir.
    """

    def __init__(self, model):
        self.model = model
        self.calls = 0
        self.budget_history: list[dict] = []
        # the starting budget: every matrix at init_r (lora_E starts at zero, so count slots, not values)
        self.initial_budget = sum(p.numel() for n, p in model.named_parameters() if "lora_E" in n)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)
        self.calls += 1
        if state.global_step % max(args.logging_steps, 1) == 0:
            self.budget_history.append({"step": state.global_step, "ranks": self.current_ranks()})

    def current_ranks(self) -> int:
        """Total rank left across adapted matrices (number of non-zero singular-value entries)."""
        total = 0
        for name, param in self.model.named_parameters():
            if "lora_E" in name:
                total += int((param.detach() != 0).sum())
        return total
