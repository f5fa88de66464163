"""Frozen segmentation teacher for Stage II: MFNet (Ha et al., IROS 2017), rebuilt from the paper.

The layer names follow the public PyTorch port whose state_dict we ship (`conv1_rgb`, `conv4_rgb.conv1_left`,
`decode4`, ...), so the weights load with strict=True. Any nn.Module mapping (ir, vis) -> logits [B,C,H,W]
can serve as a teacher; `TeacherWrapper` adapts MFNet's 4-channel input to that call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mafs_core.tta import average_views, check_tta, tta_active

MFNET_NUM_CLASSES = 9  # MFNet / MSRS order: unlabelled, car, person, bike, curve, car_stop, guardrail, cone, bump


class ConvBnLeakyRelu2d(nn.Module):
    def __init__(self, cin: int, cout: int, padding: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), negative_slope=0.2)


class MiniInception(nn.Module):
    """Paper's mini-inception block: plain and dilated 3x3 branches, concatenated, three times."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        h = cout // 2
        self.conv1_left, self.conv1_right = ConvBnLeakyRelu2d(cin, h), ConvBnLeakyRelu2d(cin, h, 2, 2)
        self.conv2_left, self.conv2_right = ConvBnLeakyRelu2d(cout, h), ConvBnLeakyRelu2d(cout, h, 2, 2)
        self.conv3_left, self.conv3_right = ConvBnLeakyRelu2d(cout, h), ConvBnLeakyRelu2d(cout, h, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1_left(x), self.conv1_right(x)), 1)
        x = torch.cat((self.conv2_left(x), self.conv2_right(x)), 1)
        return torch.cat((self.conv3_left(x), self.conv3_right(x)), 1)


class MFNet(nn.Module):
    """Input [B,4,H,W] = RGB + thermal in [0,1], H and W divisible by 16; output logits [B,n_class,H,W]."""

    def __init__(self, n_class: int = MFNET_NUM_CLASSES):
        super().__init__()
        rgb, inf = [16, 48, 48, 96, 96], [16, 16, 16, 36, 36]
        for tag, ch, cin in (("rgb", rgb, 3), ("inf", inf, 1)):
            setattr(self, f"conv1_{tag}", ConvBnLeakyRelu2d(cin, ch[0]))
            setattr(self, f"conv2_1_{tag}", ConvBnLeakyRelu2d(ch[0], ch[1]))
            setattr(self, f"conv2_2_{tag}", ConvBnLeakyRelu2d(ch[1], ch[1]))
            setattr(self, f"conv3_1_{tag}", ConvBnLeakyRelu2d(ch[1], ch[2]))
            setattr(self, f"conv3_2_{tag}", ConvBnLeakyRelu2d(ch[2], ch[2]))
            setattr(self, f"conv4_{tag}", MiniInception(ch[2], ch[3]))
            setattr(self, f"conv5_{tag}", MiniInception(ch[3], ch[4]))
        self.decode4 = ConvBnLeakyRelu2d(rgb[3] + inf[3], rgb[2] + inf[2])
        self.decode3 = ConvBnLeakyRelu2d(rgb[2] + inf[2], rgb[1] + inf[1])
        self.decode2 = ConvBnLeakyRelu2d(rgb[1] + inf[1], rgb[0] + inf[0])
        self.decode1 = ConvBnLeakyRelu2d(rgb[0] + inf[0], n_class)

    def _encode(self, x: torch.Tensor, tag: str) -> tuple[torch.Tensor, ...]:
        m = lambda n: getattr(self, f"{n}_{tag}")  # noqa: E731
        x = F.max_pool2d(m("conv1")(x), 2)
        p2 = m("conv2_2")(m("conv2_1")(x))
        p3 = m("conv3_2")(m("conv3_1")(F.max_pool2d(p2, 2)))
        p4 = m("conv4")(F.max_pool2d(p3, 2))
        return m("conv5")(F.max_pool2d(p4, 2)), p4, p3, p2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r5, r4, r3, r2 = self._encode(x[:, :3], "rgb")
        i5, i4, i3, i2 = self._encode(x[:, 3:], "inf")
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        x = self.decode4(up(torch.cat((r5, i5), 1)) + torch.cat((r4, i4), 1))
        x = self.decode3(up(x) + torch.cat((r3, i3), 1))
        x = self.decode2(up(x) + torch.cat((r2, i2), 1))
        return self.decode1(up(x))


class TeacherWrapper(nn.Module):
    """Teacher interface used by training: forward(ir [B,1,H,W], vis [B,3,H,W] RGB) -> logits at input size.

    Pads to a multiple of 16 (MFNet pools four times) with edge replication and crops back.
    """

    def __init__(self, net: nn.Module, multiple: int = 16):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        h, w = ir.shape[-2:]
        x = torch.cat((vis, ir), 1)
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net(x)[..., :h, :w]


def load_mfnet_teacher(path: str | Path, allow_pickle: bool = False, device: str | torch.device = "cpu",
                       wrap: bool = True) -> nn.Module:
    """Load the frozen MFNet teacher (strict). `.pth` is a pickle container, so loading is an explicit opt-in;
    even when allowed we use weights_only=True so no arbitrary code runs."""
    path = Path(path)
    if not allow_pickle:
        raise PermissionError(f"{path} is a pickle file; pass allow_pickle=True (teacher.allow_pickle: true) "
                              "to load it (done with torch.load(weights_only=True))")
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    n_class = state["decode1.conv.weight"].shape[0] if "decode1.conv.weight" in state else MFNET_NUM_CLASSES
    net = MFNet(n_class)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not an MFNet state_dict: {exc}") from exc
    net.eval().requires_grad_(False).to(device)
    return TeacherWrapper(net).eval() if wrap else net


class MafsTeacher(nn.Module):
    """A trained MAFS checkpoint as the teacher, optionally over test-time-augmented views (mafs_core.tta).

    Why: the shipped mafs_t averaged over six views scores 0.648 mIoU on the training frames where MFNet scores
    0.457 (docs/training.md, "Test-time augmentation"): a better target for KD and for pseudo-labels.
    forward(ir, vis) -> logits at input size (log of the averaged probabilities under TTA).
    """

    def __init__(self, model: nn.Module, scales: tuple[float, ...] = (1.0,), flip: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.scales, self.flip = check_tta(scales, flip)
        self.multiple = int(getattr(getattr(model, "config", None), "pad_multiple", 0) or 32)

    @torch.no_grad()
    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        def logits_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.model(a, b)["logits"]

        plain = logits_of(ir, vis)
        if not tta_active(self.scales, self.flip):
            return plain
        return average_views(logits_of, ir, vis, plain, self.scales, self.flip, self.multiple)


def load_teacher(path: str | Path, allow_pickle: bool = False, device: str | torch.device = "cpu",
                 tta_scales: tuple[float, ...] = (1.0,), tta_flip: bool = False) -> nn.Module:
    """The training teacher from its file: a MAFS checkpoint (.safetensors, with optional TTA) or MFNet (.pth)."""
    if str(path).endswith(".safetensors"):
        from mafs_core.checkpoint import load_checkpoint

        model, _ = load_checkpoint(path)
        model = model.eval().deploy(channels_last=False, fuse_bn=True)  # BN folded: the engine's faster form
        return MafsTeacher(model.to(device), tuple(tta_scales), tta_flip)
    if tuple(tta_scales) != (1.0,) or tta_flip:
        raise ValueError("teacher.tta_scales / teacher.tta_flip need a MAFS teacher (.safetensors), not MFNet")
    return load_mfnet_teacher(path, allow_pickle=allow_pickle, device=device)


DEFAULT_TEACHER = Path("teachers") / "mfnet" / "mfnet_final.pth"  # under the data root (MAFS_DATA_ROOT)


class TeacherSegmenter:
    """The teacher on raw camera frames (thermal as stored, BGR visible), as the engine takes them: thermal
    normalised per frame like the training data, logits at full resolution, argmax. What `mafs eval
    --baseline-teacher` and the training log's `val/teacher_*` score, on the same frames as the model."""

    def __init__(self, teacher: nn.Module, device: str | torch.device = "cpu", thermal_norm: str = "minmax"):
        from mafs_core.preprocess import ThermalNormalizer

        self.teacher, self.device = teacher, torch.device(device)
        self.norm = ThermalNormalizer(mode=thermal_norm, smoothing=0.0)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", thermal_norm: str = "minmax",
             ) -> TeacherSegmenter:
        return cls(load_mfnet_teacher(path, allow_pickle=True, device=device), device, thermal_norm)

    @torch.no_grad()
    def mask(self, ir: np.ndarray, vis_bgr: np.ndarray) -> np.ndarray:
        """HxW uint8 class ids at the visible image's resolution (IR resized to it if needed)."""
        import cv2

        if ir.shape[:2] != vis_bgr.shape[:2]:
            ir = cv2.resize(ir, (vis_bgr.shape[1], vis_bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
        t = torch.from_numpy(self.norm(ir).astype(np.float32))[None, None].to(self.device)
        v = torch.from_numpy(np.ascontiguousarray(vis_bgr[..., ::-1]).astype(np.float32) / 255.0)
        logits = self.teacher(t, v.permute(2, 0, 1)[None].to(self.device))
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
