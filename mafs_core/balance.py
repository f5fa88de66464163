"""Dynamic task weighting from the max-min fairness allocation principle (see docs/training.md).

Each task k reports its loss L_k(t). Its normalised progress is r_k = EMA(L_k)(t) / EMA(L_k)(0): 1 at the
start, smaller as the task learns. Max-min fairness allocates a shared resource (here the total loss weight
K, i.e. the gradient budget) so that the worst-off task is as well-off as possible: the task that has made
the least progress (largest r_k) is served first. We use the smooth relaxation

    w* = Proj_{box}( K * softmax(r~ / T) ),   r~_k = r_k / mean(r)   (scale-free relative lag)

where T -> 0 gives the hard max-min rule (all weight to the laggard) and T -> inf equal weights; Proj
projects onto {sum w = K, w_min <= w_k <= w_max} (water-filling: w_k = clip(w*_k + nu), nu found by bisection).
The applied weights move toward w* by an EMA (momentum) and by at most `max_step` per update, so the loss
landscape changes slowly. Every step keeps sum w = K and the bounds (convex combinations of feasible points).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def project_capped_simplex(w: torch.Tensor, total: float, lo: float, hi: float, iters: int = 60) -> torch.Tensor:
    """Euclidean projection onto {sum = total, lo <= w <= hi} ("water-filling": shift by nu, then clip)."""
    n = w.numel()
    if not (n * lo - 1e-9 <= total <= n * hi + 1e-9):
        raise ValueError(f"infeasible bounds: {n} tasks in [{lo}, {hi}] cannot sum to {total}")
    a, b = float(lo - w.max()), float(hi - w.min())
    for _ in range(iters):
        nu = 0.5 * (a + b)
        if float((w + nu).clamp(lo, hi).sum()) > total:
            b = nu
        else:
            a = nu
    out = (w + 0.5 * (a + b)).clamp(lo, hi)
    return out + (total - out.sum()) / n  # remove the bisection residue (~1e-15)


class MaxMinFairnessWeighter:
    """Stateful task weighter. `update(losses)` -> weights (a tensor of `num_tasks` floats summing to `total`)."""

    def __init__(self, num_tasks: int = 2, total: float | None = None, temperature: float = 0.1,
                 w_min: float = 0.2, w_max: float | None = None, momentum: float = 0.9, loss_ema: float = 0.9,
                 max_step: float = 0.05, warmup_updates: int = 10):
        self.n = num_tasks
        self.total = float(total if total is not None else num_tasks)
        self.temperature, self.w_min = temperature, w_min
        self.w_max = w_max if w_max is not None else self.total - (num_tasks - 1) * w_min
        self.momentum, self.loss_ema, self.max_step, self.warmup = momentum, loss_ema, max_step, warmup_updates
        project_capped_simplex(torch.full((num_tasks,), self.total / num_tasks), self.total, self.w_min, self.w_max)
        self.weights = torch.full((num_tasks,), self.total / num_tasks, dtype=torch.float64)
        self.ema: torch.Tensor | None = None
        self.init: torch.Tensor | None = None
        self.count = 0

    def progress(self) -> torch.Tensor:
        """r_k = EMA loss now / EMA loss at the end of the first `warmup_updates` updates (1 before that)."""
        if self.ema is None or self.init is None:
            return torch.ones(self.n, dtype=torch.float64)
        return self.ema / self.init.clamp_min(1e-12)

    def target(self) -> torch.Tensor:
        r = self.progress()
        rel = r / r.mean().clamp_min(1e-12)
        w = self.total * torch.softmax(rel / self.temperature, 0)
        return project_capped_simplex(w, self.total, self.w_min, self.w_max)

    def update(self, losses: Sequence[float] | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor([float(v) for v in losses], dtype=torch.float64)
        if x.numel() != self.n:
            raise ValueError(f"expected {self.n} task losses, got {x.numel()}")
        if not torch.isfinite(x).all():
            return self.weights.clone()  # skip non-finite steps (AMP overflow) without disturbing the state
        self.count += 1
        self.ema = x.clone() if self.ema is None else self.loss_ema * self.ema + (1 - self.loss_ema) * x
        if self.count <= self.warmup:
            return self.weights.clone()
        if self.init is None:
            # L_k(0) = the smoothed loss once warm-up ends: one first batch is too noisy to be the reference
            self.init = self.ema.clone()
        goal = self.momentum * self.weights + (1 - self.momentum) * self.target()
        step = goal - self.weights
        biggest = float(step.abs().max())
        if biggest > self.max_step:
            step = step * (self.max_step / biggest)  # still sums to 0 and stays inside the (convex) box
        self.weights = self.weights + step
        return self.weights.clone()

    def state_dict(self) -> dict:
        return {"weights": self.weights, "ema": self.ema, "init": self.init, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.ema, self.init, self.count = state["weights"], state["ema"], state["init"], state["count"]
