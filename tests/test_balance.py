"""Max-min fairness task weighting: laggard gets more weight, bounded, constant sum, smooth."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mafs_core.balance import MaxMinFairnessWeighter, project_capped_simplex


def _run(w: MaxMinFairnessWeighter, losses: list[list[float]]) -> list[torch.Tensor]:
    return [w.update(x) for x in losses]


def test_lagging_task_gets_more_weight() -> None:
    w = MaxMinFairnessWeighter(2, warmup_updates=5)
    # task 0 halves its loss, task 1 barely moves: task 1 lags and must get the larger weight
    hist = _run(w, [[1.0 * math.exp(-t / 50), 5.0 * (1 - t / 2000)] for t in range(300)])
    assert hist[-1][1] > hist[-1][0] + 0.3
    assert all(h[1] >= h[0] - 1e-12 for h in hist)
    # swap who lags: the weights follow
    hist = _run(w, [[0.22 * (1 + t / 100), 5.0 * math.exp(-t / 30)] for t in range(300)])
    assert hist[-1][0] > hist[-1][1]


def test_equal_progress_equal_weights_and_scale_free() -> None:
    w = MaxMinFairnessWeighter(3, total=3.0, warmup_updates=3)
    # different loss scales, same relative progress -> equal shares
    hist = _run(w, [[0.01 * 0.99**t, 10.0 * 0.99**t, 1.0 * 0.99**t] for t in range(200)])
    assert torch.allclose(hist[-1], torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_bounded_constant_sum_smooth() -> None:
    rng = random.Random(0)
    w = MaxMinFairnessWeighter(3, total=3.0, w_min=0.5, w_max=1.6, max_step=0.03, temperature=0.02,
                               warmup_updates=2, momentum=0.5)
    prev = w.weights.clone()
    for t in range(500):
        x = [rng.uniform(0.1, 2.0) * (1 + (t % 100 > 50) * 5 * (i == t // 100 % 3)) for i in range(3)]
        cur = w.update(x)
        assert cur.sum().item() == pytest.approx(3.0, abs=1e-9)
        assert cur.min() >= 0.5 - 1e-9 and cur.max() <= 1.6 + 1e-9
        assert (cur - prev).abs().max() <= 0.03 + 1e-9
        prev = cur
    assert w.weights.max() > 1.5  # the hard regime (low temperature) actually reaches the cap


def test_warmup_nonfinite_and_state_roundtrip() -> None:
    w = MaxMinFairnessWeighter(2, warmup_updates=4)
    for _ in range(4):
        assert torch.equal(w.update([1.0, 2.0]), torch.ones(2, dtype=torch.float64))
    before = w.weights.clone()
    assert torch.equal(w.update([float("nan"), 1.0]), before)
    seq = [[0.5 + 0.1 * i, 2.0] for i in range(20)]
    _run(w, seq[:10])
    w2 = MaxMinFairnessWeighter(2, warmup_updates=4)
    w2.load_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in w.state_dict().items()})
    for x in seq[10:]:
        assert torch.equal(w.update(x), w2.update(x))
    with pytest.raises(ValueError, match="expected 2"):
        w.update([1.0])


def test_projection() -> None:
    p = project_capped_simplex(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64), 3.0, 0.5, 2.0)
    assert torch.allclose(p, torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64))
    p = project_capped_simplex(torch.tensor([1.2, 1.0, 0.8], dtype=torch.float64), 3.0, 0.1, 2.9)
    assert torch.allclose(p, torch.tensor([1.2, 1.0, 0.8], dtype=torch.float64))
    with pytest.raises(ValueError, match="infeasible"):
        project_capped_simplex(torch.zeros(2), 5.0, 0.0, 1.0)
