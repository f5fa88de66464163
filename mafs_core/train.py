"""MAFS training: Stage I (masked-autoencoder pre-training) and Stage II (joint fusion + segmentation).

    mafs train configs/mafs_t_stage1.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 4 -m mafs_core.train configs/mafs_t_stage2.yaml data.root=/data/msrs

One config (dataclasses below, loaded from YAML, dotted overrides on the command line), one loop. The run
directory holds `state.pt` (everything needed to resume bit-exactly: model, optimizer, scheduler, scaler,
EMA, task weighter, RNG states, step; written atomically every `train.ckpt_every` steps), `losses.jsonl`
(one line per step), tensorboard logs in `tb/`, and the exported `final.safetensors` / `best.safetensors`
(and `raw.safetensors`: the last weights before precise BN and class-bias calibration, where those run).
Data order and augmentations are pure functions of (seed, epoch, index) and masks of (seed, rank, step), so a
run killed with SIGKILL and resumed continues with exactly the losses it would have had (on CPU).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mafs_core.balance import MaxMinFairnessWeighter
from mafs_core.box_losses import BoxTargets, box_loss
from mafs_core.boxes import Box, BoxSource
from mafs_core.classes import default_class_names
from mafs_core.datasets import (
    IGNORE_INDEX,
    AugmentConfig,
    PairDataset,
    Record,
    collate,
    cutmix,
    holdout_split,
    list_records,
    read_names,
    repeat_factors,
)
from mafs_core.losses import (
    check_kd_kind,
    class_weights,
    fusion_loss,
    kd_loss,
    merge_labels,
    ohem_ce,
    pseudo_labels,
    rec_loss,
    rgb_to_y,
)
from mafs_core.masking import mask_pair

STATE_FILE = "state.pt"
LOSS_LOG = "losses.jsonl"


# ------------------------------------------------------------------------------------------------- config
@dataclass
class SourceConfig:
    root: str = ""  # relative to data.root (absolute paths are kept); "" = data.root itself
    kind: str = "auto"  # paired | msrs | mfnet | fmb | pst900 | auto
    split: str = "train"
    holdout_every: int = 0  # every N-th pair (sorted by name) is held out for validation; 0 = none
    holdout: str = ""  # split file of names held out for validation (data/splits/msrs_val.txt); "" = none
    labels: bool = True  # false: the source's masks are not used (e.g. to train from its boxes alone)
    boxes: str = ""  # detection boxes (folder of YOLO txt / VOC xml, or a COCO json), relative to data.root
    box_format: str = "auto"  # yolo | coco | voc | auto
    box_classes: str = ""  # file class -> model class, e.g. "0:person,1:bike,2:car" (needed for YOLO)


@dataclass
class DataConfig:
    root: str = "."  # base folder of all sources: `data.root=/elsewhere` moves every dataset at once
    sources: list[SourceConfig] = field(default_factory=list)
    val_sources: list[SourceConfig] = field(default_factory=list)  # default: the held-out part of `sources`
    num_classes: int = 9
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_resize: list[int] | None = None  # [H, W] for validation images (default: augment.resize)
    batch_size: int = 4  # per process
    num_workers: int = 2
    repeat: int = 1  # passes over the training pairs per epoch (fewer loader restarts on small datasets)
    repeat_threshold: float = 0.0  # repeat-factor sampling of rare-class images (datasets.repeat_factors); 0 = off
    val_max: int = 16  # validation images of the loss pass (first N of the val set); 0 = all
    val_metric_images: int = 4  # of those, how many get the (slow) full fusion metrics
    thermal_norm_8bit: str = "minmax"  # must match the engine's default ThermalNormalizer mode
    thermal_norm_16bit: str = "percentile"


@dataclass
class ModelConfig:
    variant: str = "mafs_t"
    overrides: dict[str, Any] = field(default_factory=dict)  # MAFSConfig field overrides


@dataclass
class MaskConfig:
    cell: int = 16
    keep_prob: float = 0.5


@dataclass
class LossConfig:
    rec_grad_weight: float = 1.0  # Stage I: Sobel-gradient term
    w_int: float = 1.0
    w_grad: float = 2.0
    w_ssim: float = 1.0
    salient_weight: float = 2.0
    w_qabf: float = 0.0  # differentiable 1 - Q^{AB/F} (losses.qabf_loss); 0 leaves it out
    # L1 between the fused image and that of the starting weights (train.init_from), run as at inference: the
    # fusion decoder reads the segmentation decoder's features, so segmentation fine-tuning moves the fused image
    # users already have unless it is held there (docs/training.md, run (a1)); 0 = off
    w_anchor: float = 0.0
    target_classes: list[int] = field(default_factory=lambda: [1, 2])  # teacher classes forming the target mask
    fusion_weight: float = 1.0  # static scale of each task before the dynamic weights
    seg_weight: float = 0.5
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 4096  # per process batch
    aux_weight: float = 0.4
    kd_weight: float = 1.0
    kd_tau: float = 4.0
    kd_kind: str = "channel"  # channel (Shu et al.) | pixel (Hinton): losses.kd_loss
    pseudo_conf: float = 0.0  # teacher pseudo-labels below this confidence are ignored
    class_weighting: str = "none"  # none | sqrt_inv: CE class weights from the training labels (losses.class_weights)
    class_weight_max: float = 10.0  # sqrt_inv: largest weight as a multiple of the smallest
    # box supervision (mafs_core.box_losses) on frames with boxes and no mask; all 0 = off
    w_box_proj: float = 0.0
    w_box_pair: float = 0.0
    w_box_neg: float = 0.0
    box_teacher: str = "correct"  # correct | drop: the teacher's pseudo-labels on box frames (pseudo_with_boxes)


@dataclass
class BalanceConfig:
    enabled: bool = True
    temperature: float = 0.1
    w_min: float = 0.4
    w_max: float | None = None
    momentum: float = 0.9
    loss_ema: float = 0.9
    max_step: float = 0.02
    warmup_updates: int = 20


@dataclass
class TeacherConfig:
    path: str | None = None  # MFNet state_dict (.pth) or a MAFS checkpoint (.safetensors); joint stage only
    allow_pickle: bool = False  # explicit opt-in: .pth is a pickle container (loaded with weights_only=True)
    # a MAFS teacher's test-time augmentation (mafs_core.tta): e.g. [0.75, 1.0, 1.25] and true
    tta_scales: list[float] = field(default_factory=lambda: [1.0])
    tta_flip: bool = False
    kd: bool = True
    pseudo_labels: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # 0 = off
    schedule: str = "cosine"  # cosine | poly | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    poly_power: float = 0.9


@dataclass
class RunConfig:
    stage: str = "mae"  # mae | joint
    steps: int = 1000
    time_limit: float = 0.0  # seconds; stop early (then precise BN, validate, export as usual) once exceeded; 0 = off
    # With time_limit: the LR schedule advances by whichever is further, steps or time, so a run that the clock
    # stops has still annealed to the floor (a run cut mid-schedule keeps a high LR and averages badly).
    anneal_by_time: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16
    init_from: str | None = None  # Stage-I export (.safetensors) or a run dir / state.pt
    init_strict: bool = True  # False: skip tensors whose name or shape differ (e.g. a changed head), and say which
    out_dir: str = "runs/mafs"
    ckpt_every: int = 200
    val_every: int = 200
    log_every: int = 10  # tensorboard scalars
    image_every: int = 500  # tensorboard sample images
    ema: float = 0.0  # EMA decay of the weights (0 = off); validation/export use the EMA weights
    export: str | None = None  # copy the final model here (safetensors)
    threads: int = 0  # torch CPU threads (0 = default)
    progress: bool = True
    debug_step_delay: float = 0.0  # seconds slept per step (tests use it to kill a run mid-way)
    precise_bn_images: int = 64  # re-estimate BN statistics on this many un-augmented training images before export
    precise_bn_modules: list[str] = field(default_factory=list)  # only BN layers under these prefixes ([] = all)
    class_bias_images: int = 0  # joint stage: fit per-class logit offsets on this many training frames (calibrate.py)
    trainable: list[str] = field(default_factory=list)  # train only modules under these prefixes ([] = all)
    select: str = "loss"  # keep best.safetensors by lowest val/loss, or by highest val/miou (engine pass)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)


def _from_dict(cls: type, d: dict | None, where: str = "") -> Any:
    """Nested dataclass from a dict, rejecting unknown keys (typos should fail loudly)."""
    d = dict(d or {})
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(hints)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in '{where or cls.__name__}'; "
                         f"known: {sorted(hints)}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(default), value, sub)
        elif name in ("sources", "val_sources"):
            kwargs[name] = [s if isinstance(s, SourceConfig) else _from_dict(SourceConfig, s, sub) for s in value]
        elif isinstance(value, (str, int)) and not isinstance(value, bool) and "float" in str(hints[name].type):
            try:  # YAML 1.1 reads "1e-4" as a string
                kwargs[name] = float(value)
            except ValueError as exc:
                raise ValueError(f"config key '{sub}' must be a number, got {value!r}") from exc
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key}: '{p}' is not a section")
    d[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file + `a.b.c=value` overrides (values parsed as YAML, e.g. `optim.lr=1e-3 data.root=/data`)."""
    raw: dict = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key, yaml.safe_load(value) if value else None)
    cfg = _from_dict(TrainConfig, raw)
    if cfg.train.stage not in ("mae", "joint"):
        raise ValueError(f"train.stage must be 'mae' or 'joint', got {cfg.train.stage!r}")
    if cfg.train.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {cfg.train.precision!r}")
    if cfg.optim.schedule not in ("cosine", "poly", "constant"):
        raise ValueError(f"optim.schedule must be cosine, poly or constant, got {cfg.optim.schedule!r}")
    if not cfg.data.sources:
        raise ValueError("data.sources is empty: give at least one {root: ..., kind: auto}")
    if cfg.train.anneal_by_time and cfg.train.time_limit <= 0:
        raise ValueError("train.anneal_by_time needs train.time_limit > 0 (the time the schedule is spread over)")
    if cfg.train.select not in ("loss", "miou"):
        raise ValueError(f"train.select must be 'loss' or 'miou', got {cfg.train.select!r}")
    return cfg


# ------------------------------------------------------------------------------------------------- data
class ResumableSampler(Sampler[int]):
    """DistributedSampler semantics (shuffle by seed+epoch, equal shards, drop the ragged tail) plus a start
    offset so that a resumed run skips the batches it has already seen in the current epoch."""

    def __init__(self, n: int, world: int, rank: int, batch_size: int, seed: int):
        self.n, self.world, self.rank, self.bs, self.seed = n, world, rank, batch_size, seed
        self.batches_per_epoch = n // (world * batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} training samples cannot fill one batch of {batch_size} on {world} process(es)")
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.batches_per_epoch * self.bs
        mine = order[self.rank: self.world * per_rank: self.world]
        return mine[self.start_batch * self.bs:]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.bs


def _records(base: str, sources: list[SourceConfig], subset: str, num_classes: int = 9) -> list:
    recs = []
    for s in sources:
        names = read_names(s.holdout) if s.holdout else None
        part = holdout_split(list_records(s.kind, Path(base) / s.root, s.split), s.holdout_every, subset, names)
        if not s.labels:
            part = [dataclasses.replace(r, label=None) for r in part]
        if s.boxes:
            src = BoxSource(Path(base) / s.boxes, default_class_names(num_classes), s.box_format,
                            s.box_classes or None)
            part = [dataclasses.replace(r, box_source=src) for r in part]
        recs += part
    return recs


def box_classes(records: Sequence[Record]) -> list[int]:
    """The classes the records' boxes label (exhaustively): the box losses' classes."""
    sources = {id(r.box_source): r.box_source for r in records if r.box_source is not None}
    return sorted({c for src in sources.values() for c in src.classes})


def _box_lists(rows: torch.Tensor, frames: torch.Tensor) -> list[list[Box] | None]:
    """Collated box rows [N, 6] -> per-frame Box lists; None for frames not box-supervised (`frames` False)."""
    out: list[list[Box] | None] = [[] if f else None for f in frames.tolist()]
    for i, c, x0, y0, x1, y1 in rows.tolist():
        if out[int(i)] is not None:
            out[int(i)].append(Box(int(c), x0, y0, x1, y1))
    return out


def _held_out(s: SourceConfig) -> bool:
    return s.holdout_every > 0 or bool(s.holdout)


def build_datasets(cfg: TrainConfig) -> tuple[PairDataset, PairDataset | None]:
    d = cfg.data
    kw = {"num_classes": d.num_classes, "thermal_norm_8bit": d.thermal_norm_8bit,
          "thermal_norm_16bit": d.thermal_norm_16bit}
    train_recs = _records(d.root, d.sources, "train", d.num_classes)
    if d.repeat_threshold > 0:
        # rare-class images appear several times per epoch; ordering stays a pure function of (seed, epoch)
        factors = repeat_factors(train_recs, d.num_classes, d.repeat_threshold)
        train_recs = [r for r, k in zip(train_recs, factors, strict=True) for _ in range(k)]
    train_ds = PairDataset(train_recs, train=True, augment=d.augment, seed=cfg.train.seed, repeat=d.repeat, **kw)
    if d.val_sources:
        val_recs = _records(d.root, d.val_sources, "val" if any(_held_out(s) for s in d.val_sources) else "all",
                            d.num_classes)
    else:  # the held-out frames keep their masks (selection scores against them) and need no boxes
        held = [dataclasses.replace(s, labels=True, boxes="") for s in d.sources if _held_out(s)]
        val_recs = _records(d.root, held, "val", d.num_classes) if held else []
    val_aug = AugmentConfig(resize=d.val_resize or d.augment.resize)
    val_ds = PairDataset(val_recs[: d.val_max or None], train=False, augment=val_aug, **kw) if val_recs else None
    if val_ds is not None:
        val_ds.all_records = val_recs  # the engine pass scores the whole split, whatever val_max
    return train_ds, val_ds


def step_time_summary(step_times: list[float]) -> dict:
    """Median and p99 seconds per step of this process's run (a resumed run counts from its restart)."""
    if not step_times:
        return {"steps": 0}
    med, p99 = (float(v) for v in np.percentile(step_times, [50, 99]))
    return {"steps": len(step_times), "median": med, "p99": p99, "steps_per_s": 1.0 / med}


def calibration_frames(cfg: TrainConfig, records: list[Record] | None = None) -> PairDataset:
    """Un-augmented training frames at validation size: what precise BN and the class-bias calibration see."""
    d = cfg.data
    if records is not None:
        records = list(dict.fromkeys(records))  # once each, whatever repeat-factor sampling did
    return PairDataset(records if records is not None else _records(d.root, d.sources, "train", d.num_classes),
                       num_classes=d.num_classes, train=False,
                       augment=AugmentConfig(resize=d.val_resize or d.augment.resize),
                       thermal_norm_8bit=d.thermal_norm_8bit, thermal_norm_16bit=d.thermal_norm_16bit)


# ------------------------------------------------------------------------------------------------- helpers
def _under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module `name` is one of `prefixes` or inside one (`seg` covers `seg.head`, not `segx`)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: PairDataset, num_images: int, device: torch.device, mode: str = "joint",
               batch_size: int = 4, modules: Sequence[str] = ()) -> int:
    """Re-estimate BatchNorm running statistics as exact averages over un-augmented training frames.

    Why: the running statistics gathered while training (random crops, photometric jitter, EMA'd buffers) do
    not match whole frames at inference. Measured on mafs_t after 450 GPU steps: eval-mode person IoU against
    the teacher went from 0.08 to 0.26 after this recalibration, with no weight changed ("precise BN").
    Frames are batched by size, so datasets of mixed resolutions work. Returns the number of images used.
    `modules`: only BN layers under these module-name prefixes (empty = all). Once training runs on whole
    frames the trained statistics already fit, except the segmentation decoder's: re-estimating only `seg`
    kept held-out Q^{AB/F} at 0.724 (all layers: 0.711) and raised person agreement with the teacher
    0.551 -> 0.594 (all layers: 0.369), docs/training.md.
    """
    bns = [m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and (not modules or _under(name, modules))]
    if not bns or num_images <= 0:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.eval()  # the other layers run as at inference; only the chosen BN layers gather statistics
    for bn in bns:
        bn.train()
    buckets: dict[tuple, list[dict]] = {}
    used = 0

    def flush(items: list[dict]) -> None:
        ir = torch.stack([it["ir"] for it in items]).to(device)
        vis = torch.stack([it["vis"] for it in items]).to(device)
        model(ir, vis, mode=mode)

    step = max(1, len(dataset) // num_images)
    for index in range(0, len(dataset), step)[:num_images]:
        item = dataset[index]
        bucket = buckets.setdefault(tuple(item["ir"].shape), [])
        bucket.append(item)
        used += 1
        if len(bucket) == batch_size:
            flush(bucket)
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            flush(bucket)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return used


def _freeze_outside(model: nn.Module, trainable: Sequence[str]) -> list[nn.Module]:
    """Freeze every parameter outside the `trainable` module prefixes; return the frozen leaf modules.

    Why: fine-tuning one head (e.g. `fusion` on new data) must leave the other task bit-identical, BN statistics
    included, so the caller keeps those leaves in eval mode.
    """
    if not trainable:
        return []
    modules = dict(model.named_modules())
    unknown = [p for p in trainable if p not in modules]
    if unknown:
        raise ValueError(f"train.trainable: no module named {unknown}; top-level modules: "
                         f"{[n for n, _ in model.named_children()]}")
    for name, p in model.named_parameters():
        p.requires_grad_(_under(name.rsplit(".", 1)[0], trainable))
    return [m for n, m in modules.items() if not _under(n, trainable) and next(m.children(), None) is None]


def _lr_lambda(cfg: OptimConfig, total: int, clock: Callable[[], float] = lambda: 0.0):
    """LR factor at a step; `clock()` is the schedule's progress by time (0..1), used when it is ahead of steps.
    The decay also caps the warm-up, so that a run whose time ends during its warm-up still ends at the floor."""
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        t = min(1.0, max(max(0, step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps), clock()))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else (1 - t) ** cfg.poly_power
        return min(warm, cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)
    return f


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain numbers only, so the state file loads with weights_only=True
    st = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
          "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    random.setstate(st["python"])
    kind, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


def _load_init(model: nn.Module, path: str, strict: bool = True) -> None:
    """Initialise from an export (.safetensors) or a training state (run dir / state.pt); strict by default."""
    p = Path(path)
    if p.is_dir():
        p = p / STATE_FILE
    if p.suffix == ".safetensors":
        from mafs_core.checkpoint import load_checkpoint

        src, _ = load_checkpoint(p)
        if strict:
            _check_same_layout(model, src, path)
        state = src.state_dict()
    else:
        st = torch.load(p, map_location="cpu", weights_only=True)
        state = st["model"]
        if st.get("ema"):  # prefer the EMA weights, which are what the run exported
            state = {k.removeprefix("module."): v for k, v in st["ema"].items() if k.startswith("module.")}
    if not strict:
        own = model.state_dict()
        skipped = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
        state = {k: v for k, v in state.items() if k not in skipped}
        fresh = sorted(set(own) - set(state))
        print(f"[mafs train] partial init from {path}: skipped {skipped or 'nothing'}; freshly initialised "
              f"{fresh or 'nothing'}")
        own.update(state)
        state = own
    model.load_state_dict(state, strict=True)


def _check_same_layout(model: nn.Module, src: nn.Module, path: str) -> None:
    """A clear error, with the overrides that would match, where an init checkpoint's layout differs from the
    training model's (e.g. `mafs widen` keeps mafs_t's decoder layout in mafs_s); the bare load_state_dict error
    lists hundreds of tensors."""
    ours, theirs = model.config.to_dict(), src.config.to_dict()
    diff = {k: v for k, v in theirs.items() if k not in ("variant", "num_classes") and ours.get(k) != v}
    if diff:
        sets = " ".join(f"model.overrides.{k}={json.dumps(v)}" for k, v in diff.items())  # JSON is valid YAML
        raise RuntimeError(f"train.init_from {path} is a {theirs['variant']} whose layout differs from the training "
                           f"model ({', '.join(diff)}); to train it as it is, add: {sets}")


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill -9
    return out


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()


# ------------------------------------------------------------------------------------------------- loop
@dataclass
class StepOut:
    loss: torch.Tensor
    tasks: torch.Tensor  # unweighted per-task losses (for the fairness weighter)
    parts: dict[str, float]
    images: dict[str, torch.Tensor]


class Trainer:
    def __init__(self, cfg: TrainConfig, command: str | None = None, resume: bool = False):
        self.cfg, self.command = cfg, command
        t = cfg.train
        self.ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
        local = int(os.environ.get("LOCAL_RANK", 0))
        if t.device == "auto":
            dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        else:
            dev = torch.device(t.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"train.device={t.device} but CUDA is not available (use auto or cpu)")
            if dev.type == "cuda" and dev.index is None:  # plain "cuda": this process's GPU under torchrun
                dev = torch.device("cuda", local)
        self.device = dev
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.ddp and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.main = self.rank == 0
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed + self.rank)
        np.random.seed(t.seed + self.rank)
        torch.manual_seed(t.seed + self.rank)
        self.out = Path(t.out_dir)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)

        from mafs_core.model import build_model

        self.train_ds, self.val_ds = build_datasets(cfg)
        self.sampler = ResumableSampler(len(self.train_ds), self.world, self.rank, cfg.data.batch_size, t.seed)
        self.model = build_model(cfg.model.variant, num_classes=cfg.data.num_classes, **cfg.model.overrides)
        if t.init_from:
            _load_init(self.model, t.init_from, strict=t.init_strict)
        self.model.to(self.device)
        self.anchor: nn.Module | None = None  # the starting weights, frozen, for loss.w_anchor
        if t.stage == "joint" and cfg.loss.w_anchor > 0:
            if not t.init_from:
                raise ValueError("loss.w_anchor needs train.init_from: the weights whose fused images it keeps")
            self.anchor = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.frozen = _freeze_outside(self.model, t.trainable)
        self.ema = None
        if t.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        self.net: nn.Module = self.model
        if self.ddp:
            # the other stage's heads get no gradient: find_unused_parameters
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        o = cfg.optim
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas))
        self.time_progress = 0.0  # the schedule's progress by the clock (train.anneal_by_time; else stays 0)
        self._time_progress0 = 0.0  # what earlier invocations of a resumed run used of it
        self.fit_t0 = time.time()  # reset when fit() starts; train.time_limit counts from it
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(o, t.steps, lambda: self.time_progress))
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        b = cfg.balance
        self.weighter = MaxMinFairnessWeighter(2, 2.0, b.temperature, b.w_min, b.w_max, b.momentum, b.loss_ema,
                                               b.max_step, b.warmup_updates)
        self.teacher = None
        self.class_bias: dict | None = None  # set by the class-bias calibration before export
        self.ce_weight: torch.Tensor | None = None
        self._nonfinite = 0  # consecutive steps with a non-finite loss (_check_finite)
        if t.stage == "joint" and cfg.loss.class_weighting != "none":
            counts = label_pixel_counts(self.train_ds.records, cfg.data.num_classes)
            self.ce_weight = class_weights(counts, cfg.loss.class_weighting, cfg.loss.class_weight_max).to(dev)
            if self.main:
                print("[mafs train] CE class weights (" + cfg.loss.class_weighting + "): "
                      + " ".join(f"{w:.2f}" for w in self.ce_weight.tolist()), flush=True)
        self._teacher_val: dict | None = None  # the teacher's scores on the validation split (computed once)
        lc = cfg.loss
        weights = {"proj": lc.w_box_proj, "pair": lc.w_box_pair, "neg": lc.w_box_neg}
        self.box_weights = weights if any(weights.values()) and t.stage == "joint" else {}
        self.box_classes = box_classes(self.train_ds.records) if self.box_weights else []
        check_kd_kind(lc.kd_kind)
        if lc.box_teacher not in ("correct", "drop"):
            raise ValueError(f"loss.box_teacher must be 'correct' or 'drop', got {lc.box_teacher!r}")
        self._box_classes_t = torch.tensor(self.box_classes, dtype=torch.long, device=dev)
        if self.box_weights and self.main:
            names = default_class_names(cfg.data.num_classes)
            print(f"[mafs train] box supervision on {', '.join(names[c] for c in self.box_classes) or 'no class'}: "
                  f"weights proj {lc.w_box_proj}, pair {lc.w_box_pair}, neg {lc.w_box_neg}", flush=True)
        if t.stage == "joint" and cfg.teacher.path:
            from mafs_core.teacher import load_teacher

            self.teacher = load_teacher(cfg.teacher.path, allow_pickle=cfg.teacher.allow_pickle, device=self.device,
                                        tta_scales=tuple(cfg.teacher.tta_scales), tta_flip=cfg.teacher.tta_flip)
        self.step = 0
        self.best = math.inf
        self.history: list[dict] = []
        if resume:
            self._resume()
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # -- state
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "weighter": self.weighter.state_dict(), "step": self.step, "best": self.best,
                "time_progress": self.time_progress,
                "rng": _rng_state(self.device), "world_size": self.world,
                "config": dataclasses.asdict(self.cfg)}

    def save_state(self) -> None:
        if self.main:
            _atomic_torch_save(self.state_dict(), self.out / STATE_FILE)

    def _resume(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            if self.main:
                print(f"[mafs train] --resume: no {path}, starting from scratch", flush=True)
            return
        st = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers and strings only
        if st.get("world_size", 1) != self.world:
            raise RuntimeError(f"{path} was written by {st.get('world_size')} processes, now {self.world}: "
                               "data order would differ; resume with the same number of processes")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        self.weighter.load_state_dict(st["weighter"])
        self.step, self.best = st["step"], st["best"]
        self.time_progress = self._time_progress0 = float(st.get("time_progress", 0.0))
        _set_rng_state(st["rng"], self.device)
        if self.rank > 0:
            # only rank 0's RNG streams are stored; the loop draws its randomness from per-step generators
            # (masks) and (seed, epoch, index) (data), so other ranks just need a deterministic reseed
            torch.manual_seed(self.cfg.train.seed * 7919 + self.rank * 104729 + self.step)
        if self.main:
            log = self.out / LOSS_LOG
            kept = [r for r in _read_jsonl(log) if r.get("step", -1) < self.step]
            tmp = log.with_name(log.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, log)
            print(f"[mafs train] resumed from {path} at step {self.step}", flush=True)

    # -- one step
    def _mask_generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.train.seed * 1_000_003 + self.rank) * 10_000_019 + self.step)
        return g

    def compute(self, batch: dict, train: bool = True) -> StepOut:
        cfg, lc = self.cfg, self.cfg.loss
        ir, vis = batch["ir"].to(self.device, non_blocking=True), batch["vis"].to(self.device, non_blocking=True)
        w = self.weighter.weights.to(self.device, torch.float32)
        if not cfg.balance.enabled:
            w = torch.ones_like(w)
        ac = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        net = self.net if train else self._eval_model()
        if cfg.train.stage == "mae":
            mir, mvis, _, _ = mask_pair(ir, vis, cfg.mask.cell, cfg.mask.keep_prob, self._mask_generator())
            with ac:
                out = net(mir, mvis, mode="mae")
            l_ir = rec_loss(out["rec_ir"].float(), ir, lc.rec_grad_weight)
            l_vis = rec_loss(out["rec_vis"].float(), vis, lc.rec_grad_weight)
            tasks = torch.stack([l_ir, l_vis])
            parts = {"rec_ir": float(l_ir.detach()), "rec_vis": float(l_vis.detach())}
            images = {"masked_ir": mir, "masked_vis": mvis, "rec_ir": out["rec_ir"], "rec_vis": out["rec_vis"]}
        else:
            label = batch["label"].to(self.device, non_blocking=True)
            has_label = batch["has_label"]
            has_boxes = batch.get("has_boxes", torch.zeros_like(has_label))
            if train and cfg.data.augment.cutmix > 0:  # a frame with boxes keeps its content: the boxes describe it
                ir, vis, label, has_label = cutmix(ir, vis, label, has_label, cfg.data.augment.cutmix,
                                                   self._mask_generator(), keep=has_boxes)
            t_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(ir, vis).float()
            with ac:
                out = net(ir, vis, mode="joint")
            vis_y = rgb_to_y(vis)
            tmask = t_logits.softmax(1)[:, lc.target_classes].sum(1, keepdim=True) if t_logits is not None else None
            l_f, parts = fusion_loss(out["fused_y"].float(), ir, vis_y, tmask, lc.w_int, lc.w_grad, lc.w_ssim,
                                     lc.salient_weight, lc.w_qabf)
            if self.anchor is not None:
                with torch.no_grad(), ac:
                    anchor_y = self.anchor(ir, vis, mode="joint")["fused_y"]
                l_anchor = F.l1_loss(out["fused_y"].float(), anchor_y.float())
                l_f = l_f + lc.w_anchor * l_anchor
                parts["f_anchor"] = float(l_anchor.detach())
            boxed = has_boxes.to(self.device) & ~has_label.to(self.device)  # box-supervised frames
            logits = out["logits"].float()
            targets = None
            if self.box_weights and bool(boxed.any()):
                targets = BoxTargets.from_boxes(_box_lists(batch["boxes"], boxed.cpu()), logits.shape[1],
                                                tuple(logits.shape[-2:]), self.box_classes, self.device)
            if t_logits is not None and cfg.teacher.pseudo_labels:
                pseudo = pseudo_labels(t_logits, lc.pseudo_conf)
                if self.box_classes and bool(boxed.any()):
                    pseudo = pseudo_with_boxes(pseudo, boxed, None if targets is None else targets.mask,
                                               self._box_classes_t, lc.box_teacher)
                label = merge_labels(label, has_label, pseudo)
            l_ce = ohem_ce(logits, label, lc.ohem_thresh, lc.ohem_min_kept, weight=self.ce_weight)
            l_aux = sum((ohem_ce(a.float(), label, lc.ohem_thresh, lc.ohem_min_kept, weight=self.ce_weight)
                         for a in out["aux_logits"]), logits.new_zeros(()))
            l_kd = kd_loss(lc.kd_kind, logits, t_logits, lc.kd_tau) if t_logits is not None and cfg.teacher.kd \
                else logits.new_zeros(())
            l_s = l_ce + lc.aux_weight * l_aux + lc.kd_weight * l_kd
            box_parts: dict[str, float] = {}
            if targets is not None:
                l_box, bp = box_loss(logits, targets, torch.cat([vis, ir], 1), self.box_weights)
                l_s = l_s + l_box
                box_parts = {"box": float(l_box.detach()), **{f"box_{k}": float(v.detach()) for k, v in bp.items()}}
            tasks = torch.stack([lc.fusion_weight * l_f, lc.seg_weight * l_s])
            parts = {**parts, "fusion": float(l_f.detach()), "ce": float(l_ce.detach()),
                     "aux": float(l_aux.detach()), "kd": float(l_kd.detach()), **box_parts, "seg": float(l_s.detach())}
            images = {"ir": ir, "vis": vis, "vis_y": vis_y, "fused": out["fused"], "fused_y": out["fused_y"]}
            if not train:  # validation scores the class ids; a training step would only throw them away
                images["pred"] = out["logits"].argmax(1, keepdim=True)
                if t_logits is not None:
                    images["teacher_pred"] = t_logits.argmax(1, keepdim=True)
        return StepOut((w * tasks).sum(), tasks.detach(), parts, images)

    def _rank0(self, value: float) -> float:
        """Rank 0's value on every rank under DDP, so that clock-based decisions are the same on all ranks."""
        if not self.ddp:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, 0)
        return float(shared.item())

    def _past(self, deadline: float) -> bool:
        """Whether the wall-clock deadline has passed; rank 0 decides, so all ranks stop together."""
        return bool(self._rank0(float(time.time() > deadline)))

    def _clock_progress(self) -> float:
        """Schedule progress by time: what earlier invocations used, plus this one's share of the rest. Rank 0's
        clock decides, or the ranks' learning rates (and so their weights) would drift apart."""
        frac = min(1.0, (time.time() - self.fit_t0) / self.cfg.train.time_limit)
        return self._rank0(self._time_progress0 + (1.0 - self._time_progress0) * frac)

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _check_finite(self, o: StepOut) -> None:
        """Stop on a non-finite loss, naming its parts: training on would only write NaN weights. Under fp16 the
        grad scaler skips overflowing steps by design, so only a run of them counts there."""
        if bool(torch.isfinite(o.loss)):
            self._nonfinite = 0
            return
        self._nonfinite += 1
        if self.cfg.train.precision == "fp16" and self._nonfinite < 10:
            return
        parts = ", ".join(f"{k}={v:.4g}" for k, v in o.parts.items() if isinstance(v, float))
        raise FloatingPointError(f"loss is {float(o.loss.detach())} at step {self.step + 1} ({parts}); check the data "
                                 "and the loss weights")

    def train_step(self, batch: dict) -> dict:
        self.net.train()
        for m in self.frozen:  # frozen layers run as at inference: their BN statistics must not drift
            m.eval()
        o = self.compute(batch)
        self._check_finite(o)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(o.loss).backward()
        gnorm = 0.0
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            gnorm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        lr = self.sched.get_last_lr()[0]  # the rate this step used
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.cfg.train.anneal_by_time:  # the next step's rate, by the time it starts
            self.time_progress = self._clock_progress()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        tasks, loss = o.tasks.clone(), o.loss.detach().clone()
        if self.ddp:  # every rank must see the same task losses, or the weights would drift apart
            packed = torch.cat([tasks, loss[None]]).float()
            dist.all_reduce(packed)
            packed /= self.world
            tasks, loss = packed[:2], packed[2]
        weights_used = self.weighter.weights.tolist()
        if self.cfg.balance.enabled:
            self.weighter.update(tasks.tolist())
        return {"loss": float(loss), "tasks": tasks.tolist(), "weights": weights_used, "grad_norm": gnorm,
                "lr": lr, **o.parts, "_images": o.images}

    # -- validation
    @torch.no_grad()
    def validate(self) -> dict:
        from mafs_core.metrics import ConfusionMatrix, fusion_metrics

        if self.val_ds is None:
            return {}
        model = self._eval_model()
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        cm = ConfusionMatrix(self.cfg.data.num_classes)
        agree = ConfusionMatrix(self.cfg.data.num_classes)
        fm: dict[str, list[float]] = {}
        for i in range(len(self.val_ds)):
            s = self.val_ds[i]
            batch = collate([s])
            o = self.compute(batch, train=False)
            for k, v in {"loss": float(o.tasks.sum()), **o.parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if self.cfg.train.stage == "joint":
                pred = o.images["pred"][0, 0].cpu().numpy()
                if bool(s["has_label"]):
                    cm.update(pred, s["label"].numpy())
                if "teacher_pred" in o.images:
                    agree.update(pred, o.images["teacher_pred"][0, 0].cpu().numpy())
                if i < self.cfg.data.val_metric_images:
                    im = {k: _to_uint8(o.images[k][0, 0]) for k in ("ir", "vis_y", "fused_y")}
                    for k, v in fusion_metrics(im["ir"], im["vis_y"], im["fused_y"]).items():
                        fm.setdefault(k, []).append(float(v))
        res = {f"val/{k}": v / max(n, 1) for k, v in sums.items()}
        res.update({f"val/{k}": float(np.mean(v)) for k, v in fm.items()})
        if cm.mat.sum():
            res["val/miou"] = cm.miou()
        if self.teacher is not None and self.cfg.train.stage == "joint":
            res["val/teacher_agreement_miou"] = agree.miou()
        if self.cfg.train.stage == "joint":
            res.update(self.validate_engine())
        return res

    @torch.no_grad()
    def validate_engine(self) -> dict:
        """Segmentation scores through the inference engine: raw frames of the whole validation split at their
        own resolution, thermal normalised as the checkpoint says, BN folded: the number a user gets from
        `mafs eval`, not the loss pass's (resized, first `val_max` frames). Replaces val/miou when labels exist."""
        from mafs_core.classes import MSRS_CLASSES
        from mafs_core.engine import EngineConfig, FusionSegmenter
        from mafs_core.metrics import ConfusionMatrix

        recs = [r for r in getattr(self.val_ds, "all_records", self.val_ds.records) if r.label is not None]
        if not recs:
            return {}
        nc = self.cfg.data.num_classes
        names = list(MSRS_CLASSES) if nc == len(MSRS_CLASSES) else [str(i) for i in range(nc)]
        meta = {"num_classes": nc, "thermal_norm": {"mode": self.cfg.data.thermal_norm_8bit}}
        engine = FusionSegmenter(self._eval_model(), meta, EngineConfig(device=str(self.device), warmup=0))
        cm = ConfusionMatrix(nc)
        for rec in recs:
            ir, vis, label = _raw_frame(rec)
            cm.update(engine.run(ir, vis, want_color=False).mask, label)
        engine.release()
        res = {"val/miou": cm.miou(), "val/images": float(len(recs))}
        res.update({f"val/iou_{n}": float(v) for n, v in zip(names, cm.iou(), strict=True)})
        if self.teacher is not None:
            if self._teacher_val is None:
                self._teacher_val = teacher_scores(self.teacher, recs, nc, names, self.device,
                                                   self.cfg.data.thermal_norm_8bit)
            res.update(self._teacher_val)
        return res

    # -- export
    def export(self, path: Path, extra: dict | None = None) -> None:
        from mafs_core.checkpoint import save_checkpoint
        from mafs_core.classes import MSRS_CLASSES, MSRS_PALETTE

        nc = self.cfg.data.num_classes
        meta: dict[str, Any] = {"variant": self.cfg.model.variant, "num_classes": nc,
                                "thermal_norm": {"mode": self.cfg.data.thermal_norm_8bit}}
        if nc == len(MSRS_CLASSES):
            meta.update(class_names=list(MSRS_CLASSES), palette=[list(c) for c in MSRS_PALETTE])
        meta["training"] = {"stage": self.cfg.train.stage, "steps": self.step, "world_size": self.world,
                            "command": self.command, "config": dataclasses.asdict(self.cfg),
                            "teacher": self.cfg.teacher.path if self.cfg.train.stage == "joint" else None,
                            "ema": self.cfg.train.ema, **(extra or {})}
        if self.class_bias is not None:
            meta["training"]["class_bias"] = self.class_bias
        model = self._eval_model()
        save_checkpoint(path, model, meta)

    # -- main loop
    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        bs = cfg.data.batch_size
        spe = self.sampler.batches_per_epoch
        log = (self.out / LOSS_LOG).open("a") if self.main else None
        bar = None
        if self.main and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc=f"mafs {t.stage}", dynamic_ncols=True)
        last_val: dict = {}
        t0 = self.fit_t0 = time.time()
        out_of_time = False
        step_times: list[float] = []
        tick = time.perf_counter()  # a step's time includes waiting for its batch, not validation or checkpoints
        while self.step < t.steps and not out_of_time:
            epoch, start = divmod(self.step, spe)
            self.sampler.set_position(epoch, start)
            self.train_ds.set_epoch(epoch)
            loader = DataLoader(self.train_ds, batch_size=bs, sampler=self.sampler, drop_last=True, collate_fn=collate,
                                num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                persistent_workers=False, generator=torch.Generator().manual_seed(t.seed + epoch))
            for batch in loader:
                if self.step >= t.steps:
                    break
                r = self.train_step(batch)
                images = r.pop("_images")
                r["step_s"] = time.perf_counter() - tick
                step_times.append(r["step_s"])
                self.step += 1
                rec = {"step": self.step - 1, **{k: v for k, v in r.items()}}
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{r['loss']:.4f}", w=",".join(f"{w:.2f}" for w in r["weights"]),
                                    lr=f"{r['lr']:.1e}")
                if self.writer is not None and (self.step % t.log_every == 0 or self.step == 1):
                    for k, v in r.items():
                        if isinstance(v, (int, float)):
                            self.writer.add_scalar(f"train/{k}", v, self.step)
                    names = ("ir", "vis") if t.stage == "mae" else ("fusion", "seg")
                    for name, w, task in zip(names, r["weights"], r["tasks"]):
                        self.writer.add_scalar(f"weights/{name}", w, self.step)
                        self.writer.add_scalar(f"tasks/{name}", task, self.step)
                if self.writer is not None and self.step % t.image_every == 0:
                    for k, v in images.items():
                        if v.dtype in (torch.float32, torch.float16, torch.bfloat16):
                            self.writer.add_images(f"img/{k}", v[:2].detach().float().clamp(0, 1).cpu(), self.step)
                if t.val_every and self.step % t.val_every == 0 and self.step < t.steps:
                    last_val = self._validate_and_keep_best()
                if t.ckpt_every and self.step % t.ckpt_every == 0:
                    self.save_state()
                tick = time.perf_counter()
                if t.debug_step_delay:
                    time.sleep(t.debug_step_delay)
                if t.time_limit > 0 and self._past(t0 + t.time_limit):
                    out_of_time = True
                    if self.main:
                        print(f"[mafs train] time limit {t.time_limit:g} s reached at step {self.step}"
                              + (f", LR annealed to {self.sched.get_last_lr()[0]:.2e}" if t.anneal_by_time else ""))
                    break
        if bar is not None:
            bar.close()
        speed = step_time_summary(step_times)
        if self.main and step_times:
            print(f"[mafs train] {speed['steps']} steps: median {speed['median']:.3f} s/step "
                  f"({speed['steps_per_s']:.2f} steps/s), p99 {speed['p99']:.3f} s")
        calib = calibration_frames(cfg, self.train_ds.records)
        do_bn = self.main and t.precise_bn_images > 0
        do_bias = self.main and t.class_bias_images > 0 and t.stage == "joint"
        if do_bn or do_bias:
            # the weights as trained, before the export steps change them: precise BN cost run (l2) 0.04 mIoU
            # (docs/training.md), and state.pt is rewritten after them
            self.export(self.out / "raw.safetensors", {"before": "precise BN and class-bias calibration"})
        if do_bn:
            n = precise_bn(self._eval_model(), calib, t.precise_bn_images, self.device, mode=t.stage,
                           modules=t.precise_bn_modules)
            print(f"[mafs train] precise BN: statistics re-estimated on {n} un-augmented training images")
            self.best = math.inf  # the recalibrated model is the one to keep
        if do_bias:
            from mafs_core.calibrate import calibrate_class_bias

            fit = calibrate_class_bias(self._eval_model(), calib, t.class_bias_images, self.device, self.teacher)
            self.class_bias = dataclasses.asdict(fit)
            print(f"[mafs train] class-bias calibration on {fit.images} frames: mIoU {fit.miou_before:.3f} -> "
                  f"{fit.miou_after:.3f}, offsets {fit.bias}")
            self.best = math.inf
        last_val = self._validate_and_keep_best() or last_val
        self.save_state()
        summary = {"steps": self.step, "seconds": time.time() - t0, "val": last_val, "rank": self.rank,
                   "world_size": self.world, "step_s": speed,
                   "param_checksum": float(sum(p.detach().double().sum() for p in self.model.parameters()))}
        if self.main:
            self.export(self.out / "final.safetensors", {"val": last_val})
            if t.export:
                self.export(Path(t.export), {"val": last_val})
        (self.out / f"summary_rank{self.rank}.json").write_text(json.dumps(summary, indent=1))
        if log is not None:
            log.close()
        if self.writer is not None:
            self.writer.close()
        return summary

    def _validate_and_keep_best(self) -> dict:
        if not self.main or self.val_ds is None:
            return {}
        res = self.validate()
        if self.writer is not None:
            for k, v in res.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.writer.add_scalar(k, v, self.step)
        if self.cfg.train.select == "miou":
            m = res.get("val/miou")
            score = -m if m is not None and not math.isnan(m) else math.inf
        else:
            score = res.get("val/loss", math.inf)
        if score < self.best:
            self.best = score
            self.export(self.out / "best.safetensors", {"val": res})
        print(f"[mafs train] step {self.step} " + " ".join(f"{k}={v:.4f}" for k, v in res.items()
                                                             if isinstance(v, float)), flush=True)
        return res


def pseudo_with_boxes(pseudo: torch.Tensor, boxed: torch.Tensor, box_mask: torch.Tensor | None,
                      box_classes: Sequence[int] | torch.Tensor, mode: str = "correct") -> torch.Tensor:
    """The teacher's pseudo-labels [B,H,W] on the box-supervised frames `boxed` [B] (loss.box_teacher).

    `correct`: a box class is kept where a box of that class holds it, any other class where no box is; the
    rest (the teacher's objects outside every box, the box pixels it calls something else) becomes ignore and
    is left to the box terms. `drop`: every box-class pixel is left to the boxes; measured worse, since the
    projection term alone gives few positives (docs/training.md, "Box supervision"). box_mask: [B,C,H,W], 1
    inside some box of class c (BoxTargets.mask)."""
    classes = torch.as_tensor(box_classes, dtype=torch.long, device=pseudo.device)  # no copy for a tensor
    owned = torch.isin(pseudo, classes)
    if mode == "drop" or box_mask is None:
        return pseudo.masked_fill(owned & boxed.view(-1, 1, 1), IGNORE_INDEX)
    inside = box_mask > 0
    in_any = inside[:, classes].any(1)
    in_own = inside.gather(1, pseudo.clamp(max=inside.shape[1] - 1).long()[:, None])[:, 0]
    keep = torch.where(owned, in_own, ~in_any) | (pseudo == IGNORE_INDEX)
    return pseudo.masked_fill(~keep & boxed.view(-1, 1, 1), IGNORE_INDEX)


def label_pixel_counts(records: Sequence[Record], num_classes: int) -> np.ndarray:
    """Pixels per class over the records' labels (each record once; unlabelled records add nothing)."""
    from mafs_core.io import read_label

    counts = np.zeros(num_classes, np.int64)
    for r in dict.fromkeys(records):
        if r.label is not None:
            lab = read_label(r.label)
            counts += np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)[:num_classes]
    return counts


def _raw_frame(rec: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thermal as stored, BGR visible, label) of a record, as a camera or `mafs eval` would hand them over."""
    from mafs_core.io import read_image, read_ir, read_label, read_vis

    if rec.rgbt is not None:
        img = read_image(rec.rgbt)
        ir, vis = np.ascontiguousarray(img[..., 3]), np.ascontiguousarray(img[..., :3])
    else:
        ir, vis = read_ir(rec.ir), read_vis(rec.vis)
    return ir, vis, read_label(rec.label)


def teacher_scores(teacher: nn.Module, records: Sequence[Record], num_classes: int, names: Sequence[str],
                   device: torch.device, thermal_norm: str = "minmax") -> dict:
    """The frozen teacher's mIoU and per-class IoU on labelled records, at full resolution, for the log
    (`val/teacher_*`): the student's validation figures read against it."""
    from mafs_core.metrics import ConfusionMatrix
    from mafs_core.teacher import TeacherSegmenter

    seg = TeacherSegmenter(teacher, device, thermal_norm)
    cm = ConfusionMatrix(num_classes)
    for rec in records:
        ir, vis, label = _raw_frame(rec)
        cm.update(seg.mask(ir, vis), label)
    out = {"val/teacher_miou": cm.miou()}
    out.update({f"val/teacher_iou_{n}": float(v) for n, v in zip(names, cm.iou(), strict=True)})
    return out


def train(cfg: TrainConfig, command: str | None = None, resume: bool = False) -> dict:
    trainer = Trainer(cfg, command, resume)
    try:
        return trainer.fit()
    finally:
        if trainer.ddp and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- CLI
def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 data.root=/data/msrs")
    p.add_argument("--resume", action="store_true", help="continue from train.out_dir/state.pt if present")


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        command = " ".join(shlex.quote(a) for a in sys.argv)
        summary = train(cfg, command=command, resume=args.resume)
    except (ValueError, FileNotFoundError, PermissionError) as exc:  # bad config or data: a message, not a trace
        print(f"mafs train: error: {exc}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "param_checksum"}, indent=1))
    return 0


def register(subparsers, registry: dict) -> None:
    p = subparsers.add_parser("train", help="train MAFS (Stage I mae / Stage II joint) from a YAML config",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mafs_core.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
