"""precise_bn: BatchNorm statistics become exact averages over un-augmented frames, weights untouched."""

from __future__ import annotations

import torch
from torch import nn

from mafs_core.train import precise_bn


class _Frames(torch.utils.data.Dataset):
    """Two frame sizes (batched separately), constant thermal, visible with a known mean."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [{"ir": torch.full((1, 8, 8), 0.5), "vis": torch.rand(3, 8, 8, generator=g) * 0.2 + 0.7}
                      for _ in range(6)]
        self.items += [{"ir": torch.full((1, 4, 6), 0.5), "vis": torch.rand(3, 4, 6, generator=g) * 0.2 + 0.7}
                       for _ in range(3)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, mode: str = "joint") -> torch.Tensor:
        assert mode == "joint"
        return self.conv(self.bn(vis))


def test_running_stats_are_recomputed_from_the_frames() -> None:
    net = _Net()
    net.bn.running_mean.fill_(-3.0)  # stale statistics, as after training on other data
    net.bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    net.eval()
    used = precise_bn(net, _Frames(), num_images=9, device=torch.device("cpu"), batch_size=3)
    assert used == 9
    assert not net.training, "the caller's train/eval mode is restored"
    assert net.bn.momentum == 0.1, "momentum restored"
    # cumulative average of the per-batch means: 2 batches of 8x8 frames and 1 of 4x6 frames
    ds = _Frames()
    batch_means = [torch.stack([ds[i]["vis"] for i in idx]).mean((0, 2, 3)) for idx in ([0, 1, 2], [3, 4, 5],
                                                                                          [6, 7, 8])]
    assert torch.allclose(net.bn.running_mean, torch.stack(batch_means).mean(0), atol=1e-6)
    assert (net.bn.running_var < 0.01).all(), "variance of uniform(0.7, 0.9) data, not the stale 9.0"
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), f"{k} changed"


def test_only_the_named_modules_are_recalibrated() -> None:
    class Two(_Net):
        def __init__(self) -> None:
            super().__init__()
            self.seg = nn.Sequential(nn.BatchNorm2d(3))

        def forward(self, ir: torch.Tensor, vis: torch.Tensor, mode: str = "joint") -> torch.Tensor:
            return self.seg(self.conv(self.bn(vis)))

    net = Two()
    for bn in (net.bn, net.seg[0]):
        bn.running_mean.fill_(-3.0)
    precise_bn(net, _Frames(), num_images=9, device=torch.device("cpu"), batch_size=3, modules=["seg"])
    assert (net.bn.running_mean == -3.0).all(), "outside the prefix: kept"
    assert (net.seg[0].running_mean != -3.0).all(), "under the prefix: re-estimated"
