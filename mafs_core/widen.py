"""`mafs widen`: a trained network grown into a larger variant that computes the same function (Net2Net).

Why: a lent GPU gives a session minutes, not hours. mafs_s trained from scratch in such a burst segmented worse
than the shipped mafs_t (docs/training.md). Starting mafs_s from mafs_t's knowledge instead ("Net2WiderNet" and
"Net2DeeperNet", Chen, Goodfellow and Shlens, ICLR 2016) spends the whole burst on improving it.

How, for a target whose every width is a whole multiple of the source's:
- every wide channel copies one narrow channel (copies are concatenated: wide channel j copies narrow channel
  j mod C, per part where a tensor is a concatenation, e.g. DEM's [IR, VIS] or Attention's [K, V]); BatchNorm
  statistics and biases are copied with their channels, so every activation of the wide network is the narrow
  one repeated, in training and in eval mode;
- a layer that reads a widened input splits each narrow weight over the copies with random shares that sum to
  one: the output is unchanged, and the copies receive different gradients, so they can grow apart in training
  (equal shares would keep them identical forever);
- extra encoder blocks start as the identity (their last BatchNorm scale and shift at zero: a residual block
  then adds nothing, and the scale still receives a gradient);
- the attention layout follows: heads keep their width (`head_dim`), so the wide layer has whole copies of the
  narrow heads;
- sizes come from the target variant, structure (attention placement, pooling, head width) from the source.
  For mafs_t -> mafs_s that keeps mafs_t's convolution block at 1/8 in the decoder (`dec_attn`), recorded in
  the checkpoint's config, which every loader reads;
- the Stage-I reconstruction heads (`rec_*`, unused after Stage I; mafs_s's `mae_dim` is not a multiple of
  mafs_t's) keep their fresh initialisation.

Nothing here is approximate: `mafs widen` checks the widened network against the source on an input and
refuses to write a checkpoint that differs.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mafs_core.blocks import Attention
from mafs_core.model import MAFS, VARIANTS

# Tensors that are concatenations of two equal parts along a dimension (see the module docstring).
_OUT_PARTS = (re.compile(r"dem\.\d+\.channel\.2\.(weight|bias)$"), re.compile(r"\.attn\.kv\.(weight|bias)$"))
_IN_PARTS = (re.compile(r"dem\.\d+\.(channel\.0|spatial)\.weight$"), re.compile(r"cam\.\d+\.proj\.conv\.weight$"),
             re.compile(r"afm\d\.weight\.weight$"))
_SKIP = re.compile(r"^rec_(ir|vis)\.")
SIZE_FIELDS = ("sfe_channels", "widths", "depths", "dec_dim", "phf_hidden", "mae_dim")


class WidenError(ValueError):
    """The target is not a whole-multiple widening of the source, or the result does not match it."""


def _index_map(wide: int, narrow: int, parts: int, name: str) -> torch.Tensor:
    """Narrow channel copied by each wide channel: j mod C within each of `parts` concatenated parts."""
    if wide % parts or narrow % parts or (wide // parts) % (narrow // parts):
        raise WidenError(f"{name}: {wide} channels are not a whole multiple of {narrow} ({parts} part(s))")
    pw, pn = wide // parts, narrow // parts
    j = torch.arange(wide)
    return (j // pw) * pn + (j % pw) % pn


def _parts(name: str, patterns: tuple[re.Pattern, ...]) -> int:
    return 2 if any(p.search(name) for p in patterns) else 1


def _widen_tensor(name: str, w: torch.Tensor, n: torch.Tensor, spread: float, gen: torch.Generator) -> torch.Tensor:
    """The wide tensor of shape w.shape from the narrow tensor n (see the module docstring)."""
    if w.dim() == 0:
        return n.clone()
    out_map = _index_map(w.shape[0], n.shape[0], _parts(name, _OUT_PARTS), name)
    t = n.index_select(0, out_map)
    if w.dim() < 2 or w.shape[1] == n.shape[1]:  # 1-D, or an input that was not widened (depthwise, stems)
        if t.shape != w.shape:
            raise WidenError(f"{name}: cannot widen {tuple(n.shape)} to {tuple(w.shape)}")
        return t.clone()
    in_map = _index_map(w.shape[1], n.shape[1], _parts(name, _IN_PARTS), name)
    t = t.index_select(1, in_map)
    counts = torch.bincount(in_map, minlength=n.shape[1]).to(t.dtype)  # copies of each narrow input
    # Random shares per (output, narrow input) that sum to one over its copies.
    u = torch.rand(w.shape[0], w.shape[1], generator=gen, dtype=t.dtype) * 2 - 1
    mean = torch.zeros(w.shape[0], n.shape[1], dtype=t.dtype).index_add_(1, in_map, u) / counts
    share = (1 + spread * (u - mean[:, in_map])) / counts[in_map]
    return t * share.reshape(*share.shape, *([1] * (t.dim() - 2)))


def widen(src: MAFS, variant: str = "mafs_s", spread: float = 0.5, seed: int = 0) -> MAFS:
    """A `variant`-sized network computing what `src` computes (eval and training mode).

    spread: how unequal the copies' shares of a weight may be (0 = equal halves, which never break symmetry;
    at most 1, where a share may reach zero).
    """
    if variant not in VARIANTS:
        raise WidenError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    if not 0.0 <= spread <= 1.0:
        raise WidenError(f"spread must be in [0, 1], got {spread}")
    target = VARIANTS[variant]
    cfg = replace(src.config, variant=variant, **{f: getattr(target, f) for f in SIZE_FIELDS})
    if any(d < s for d, s in zip(cfg.depths, src.config.depths, strict=True)):
        raise WidenError(f"{variant} depths {cfg.depths} are shallower than the source's {src.config.depths}")
    with torch.random.fork_rng(devices=[]):  # fresh tensors (extra blocks, rec heads) follow `seed` too
        torch.manual_seed(seed)
        wide = MAFS(cfg)
    _check_heads(src, wide)
    gen = torch.Generator().manual_seed(seed)
    narrow_state = src.state_dict()
    state = wide.state_dict()
    with torch.no_grad():
        for name, w in state.items():
            if _SKIP.match(name):
                continue
            if name in narrow_state:
                state[name] = _widen_tensor(name, w, narrow_state[name].float(), spread, gen).to(w.dtype)
            elif not _extra_block(name, src.config.depths):
                raise WidenError(f"{name}: not in the source network and not part of an extra encoder block")
            elif re.search(r"\.pw2\.bn\.(weight|bias)$", name):
                state[name] = torch.zeros_like(w)  # the extra residual block adds nothing yet
    wide.load_state_dict(state)
    return wide.train(src.training)


def _extra_block(name: str, src_depths: tuple[int, ...]) -> bool:
    m = re.match(r"enc_(ir|vis)\.stages\.(\d)\.blocks\.(\d+)\.", name)
    return bool(m) and int(m.group(3)) >= src_depths[int(m.group(2))]


def _check_heads(src: MAFS, wide: MAFS) -> None:
    """Every attention layer must keep its head width, so that wide heads are whole copies of narrow ones."""
    narrow = {n: m for n, m in src.named_modules() if isinstance(m, Attention)}
    for name, m in wide.named_modules():
        if isinstance(m, Attention):
            s = narrow[name]
            if m.q.in_channels // m.heads != s.q.in_channels // s.heads or m.q.in_channels % m.heads:
                raise WidenError(f"{name}: head width {s.q.in_channels // s.heads} cannot carry over to "
                                 f"{m.q.in_channels} channels in {m.heads} heads")


@torch.no_grad()
def max_difference(a: nn.Module, b: nn.Module, height: int = 96, width: int = 128, seed: int = 0) -> float:
    """Largest absolute difference of logits and fused image between two networks in eval mode."""
    g = torch.Generator().manual_seed(seed)
    ir, vis = torch.rand(1, 1, height, width, generator=g), torch.rand(1, 3, height, width, generator=g)
    modes = a.training, b.training
    a.eval(), b.eval()
    oa, ob = a(ir, vis), b(ir, vis)
    a.train(modes[0]), b.train(modes[1])
    return max(float((oa[k] - ob[k]).abs().max()) for k in ("logits", "fused"))


def register(sub, registry) -> None:
    p = sub.add_parser("widen", help="grow trained weights into a larger variant that computes the same function",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="source weights (.safetensors), e.g. weights/mafs_t.safetensors")
    p.add_argument("out", help="where to write the widened weights (.safetensors)")
    p.add_argument("--variant", default="mafs_s", help="target size (default mafs_s)")
    p.add_argument("--spread", type=float, default=0.5, help="how unequal the copies' weight shares are (0-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest output difference accepted")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mafs_core.checkpoint import CARRIED_METADATA, load_checkpoint, save_checkpoint

    src, meta = load_checkpoint(args.checkpoint)
    try:
        wide = widen(src, args.variant, args.spread, args.seed).eval()
    except WidenError as exc:
        print(f"mafs widen: {exc}")
        return 2
    diff = max_difference(src, wide)
    n_src, n_wide = (sum(p.numel() for p in m.parameters()) for m in (src, wide))
    print(f"{meta['variant']} ({n_src / 1e6:.2f} M parameters) -> {args.variant} ({n_wide / 1e6:.2f} M): "
          f"largest output difference {diff:.2e}")
    if diff > args.tolerance:
        print(f"mafs widen: the widened network differs from the source by {diff:.2e} > {args.tolerance}; "
              "nothing written")
        return 1
    training = {"widened_from": {"file": str(args.checkpoint), "sha256": meta.get("sha256"),
                                 "variant": meta["variant"], "spread": args.spread, "seed": args.seed,
                                 "max_output_difference": diff, "source_training": meta.get("training", {})}}
    keep = {k: meta[k] for k in CARRIED_METADATA if k in meta}
    save_checkpoint(Path(args.out), wide, {**keep, "variant": args.variant, "training": training})
    print(f"wrote {args.out}")
    return 0
