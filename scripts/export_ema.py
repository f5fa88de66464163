"""Export the EMA weights stored in a run's checkpoint (state.pt) as safetensors, without precise BN or
class-bias calibration (apply those with scripts/recalibrate.py).

    python scripts/export_ema.py RUN/state.pt OUT.safetensors [--like weights/mafs_t.safetensors]

Why: `mafs train` exports only at the end; an intermediate step can be the better model (held-out metrics),
and its checkpoint keeps the EMA weights that validation saw.
"""

from __future__ import annotations

import argparse

import torch

from mafs_core.checkpoint import load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state")
    ap.add_argument("out")
    ap.add_argument("--like", default="weights/mafs_t.safetensors", help="weights of the same variant (metadata)")
    args = ap.parse_args(argv)
    st = torch.load(args.state, map_location="cpu", weights_only=False)  # our own training checkpoint
    if not st.get("ema"):
        raise SystemExit(f"{args.state} has no EMA weights (train.ema was 0)")
    model, meta = load_checkpoint(args.like)
    model.load_state_dict({k.removeprefix("module."): v for k, v in st["ema"].items() if k.startswith("module.")})
    save_checkpoint(args.out, model, {**meta, "training": {"ema_of": args.state, "steps": st["step"]}})
    print(f"{args.state} (step {st['step']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
