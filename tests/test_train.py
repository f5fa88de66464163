"""Training: config loading, short real runs on MSRS pairs that lower the loss (Stage I and II),
bit-exact resume after SIGKILL, and a 2-process DDP run on gloo."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mafs_core.train import LOSS_LOG, load_config, train

REPO = Path(__file__).resolve().parent.parent
NAMES = ["00004N", "00028N", "00081D", "00174D", "00196D", "00258D"]  # in data/samples/msrs


@pytest.fixture(scope="module")
def pairs(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real MSRS sample pairs (symlinked, never copied) in the generic paired layout."""
    root = tmp_path_factory.mktemp("msrs_few")
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
        for n in NAMES:
            (root / sub / f"{n}.png").symlink_to(sample_data / "msrs" / sub / f"{n}.png")
    return root


TEACHER = Path("teachers") / "mfnet" / "mfnet_final.pth"  # under the full data root (shared_data)


def _config(tmp: Path, data_root: Path, stage: str, teacher: Path | None = None, **train_kw) -> Path:
    cfg = {
        "data": {"root": str(data_root), "sources": [{"root": "", "holdout_every": 6}],
                 "augment": {"resize": [96, 128], "crop": [64, 96], "scale": [0.9, 1.1]},
                 "batch_size": 2, "num_workers": 0, "val_max": 1, "val_metric_images": 1},
        "model": {"variant": "mafs_t"},
        "optim": {"lr": 3e-3, "warmup_steps": 3, "schedule": "constant"},
        "loss": {"ohem_min_kept": 512},
        "balance": {"warmup_updates": 3},
        "train": {"stage": stage, "steps": 30, "out_dir": str(tmp / f"run_{stage}"), "ckpt_every": 1000,
                  "val_every": 1000, "progress": False, "seed": 1, "threads": 1, **train_kw},
    }
    if teacher is not None:
        cfg["teacher"] = {"path": str(teacher), "allow_pickle": True}
    path = tmp / f"{stage}_{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / LOSS_LOG).read_text().splitlines())}


def test_config_and_overrides(tmp_path: Path, pairs: Path) -> None:
    path = _config(tmp_path, pairs, "mae")
    cfg = load_config(path, ["optim.lr=1e-4", "data.root=/elsewhere", "data.augment.crop=[32,48]", "train.ema=0.9"])
    assert cfg.optim.lr == 1e-4 and cfg.data.root == "/elsewhere" and cfg.data.augment.crop == [32, 48]
    assert cfg.train.ema == 0.9 and cfg.data.sources[0].holdout_every == 6
    with pytest.raises(ValueError, match=r"unknown config key.*'lrr'"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"train\.stage"):
        load_config(path, ["train.stage=fusion"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["optim.lr"])
    if not torch.cuda.is_available():  # plain "cuda" is accepted on a GPU; here it must fail clearly
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(load_config(path, ["train.device=cuda"]))
    for name in ("mafs_t_stage1", "mafs_t_stage2", "mafs_s_stage1", "mafs_s_stage2"):
        load_config(REPO / "configs" / f"{name}.yaml")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", ["mae", "joint"])
def test_short_real_run_lowers_loss(tmp_path: Path, pairs: Path, stage: str, request: pytest.FixtureRequest) -> None:
    from mafs_core.checkpoint import load_checkpoint

    joint = stage == "joint"
    teacher = request.getfixturevalue("shared_data") / TEACHER if joint else None  # MFNet weights: full data
    cfg_path = _config(tmp_path, pairs, stage, teacher, ema=0.9 if joint else 0.0,
                       class_bias_images=2 if joint else 0)
    # the joint run also takes the optional parts: the Q^{AB/F} fusion term and CutMix batches
    summary = train(load_config(cfg_path, ["loss.w_qabf=0.5", "data.augment.cutmix=0.5"] if joint else []),
                    command="pytest")
    run = tmp_path / f"run_{stage}"
    loss = np.array([v for _, v in sorted(_losses(run).items())])
    assert len(loss) == 30 and np.isfinite(loss).all()
    first, last = loss[:5].mean(), loss[-5:].mean()
    print(f"{stage}: first5 {first:.4f} last5 {last:.4f}")
    assert last < 0.8 * first
    assert summary["val"]["val/loss"] > 0
    _, meta = load_checkpoint(run / "final.safetensors")
    assert meta["variant"] == "mafs_t" and meta["training"]["command"] == "pytest"
    assert meta["training"]["config"]["train"]["stage"] == stage and meta["class_names"][2] == "person"
    assert (run / "state.pt").is_file() and any((run / "tb").iterdir())
    if joint:  # class-bias calibration ran on teacher-labelled frames and is recorded with the weights
        rows = [json.loads(r) for r in (run / LOSS_LOG).read_text().splitlines()]
        assert all(0 < r["f_qabf"] < 1 for r in rows)
        # scripts/export_ema.py: the EMA weights of the last checkpoint, as safetensors
        out = tmp_path / "ema.safetensors"
        subprocess.run([sys.executable, str(REPO / "scripts" / "export_ema.py"), str(run / "state.pt"), str(out),
                        "--like", str(run / "final.safetensors")], check=True, cwd=REPO, timeout=120)
        ema, ema_meta = load_checkpoint(out)
        state = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
        assert ema_meta["training"]["steps"] == state["step"]
        assert torch.equal(ema.state_dict()["seg.head.weight"], state["ema"]["module.seg.head.weight"])
        fit = meta["training"]["class_bias"]
        assert fit["images"] == 2 and len(fit["bias"]) == 9 and fit["miou_after"] >= fit["miou_before"]
    else:
        assert "class_bias" not in meta["training"]


@pytest.mark.timeout(240)
def test_time_limit_stops_early_and_still_exports(tmp_path: Path, pairs: Path) -> None:
    from mafs_core.checkpoint import load_checkpoint

    cfg = load_config(_config(tmp_path, pairs, "mae", steps=1000, time_limit=3.0, debug_step_delay=0.5),
                      ["data.repeat=4", "train.precise_bn_images=2"])
    summary = train(cfg, command="pytest")
    steps = len(_losses(tmp_path / "run_mae"))
    assert 2 <= summary["steps"] == steps < 20
    # every step's wall time is logged; the 0.5 s delay after a step is counted in the next one
    rows = [json.loads(r) for r in (tmp_path / "run_mae" / LOSS_LOG).read_text().splitlines()]
    assert all(r["step_s"] > 0 for r in rows) and all(r["step_s"] >= 0.5 for r in rows[1:])
    speed = summary["step_s"]
    assert speed["steps"] == steps and 0.5 <= speed["median"] <= speed["p99"]
    assert speed["steps_per_s"] == pytest.approx(1 / speed["median"])
    assert load_checkpoint(tmp_path / "run_mae" / "final.safetensors")[1]["training"]["steps"] == steps
    # the weights before precise BN are kept beside the recalibrated ones: same layers, other BN statistics
    raw, final = (load_checkpoint(tmp_path / "run_mae" / f"{n}.safetensors")[0].state_dict() for n in ("raw", "final"))
    assert raw.keys() == final.keys()
    assert all(torch.equal(raw[k], final[k]) for k in raw if "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(raw[k], final[k]) for k in raw if k.endswith("running_var"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("by_time", [False, True])
def test_anneal_by_time_spreads_the_schedule_over_the_time_limit(tmp_path: Path, pairs: Path, by_time: bool) -> None:
    """A 1000-step poly schedule stopped by an 8 s limit: by steps the LR is still near its peak; by time it has
    fallen step after step and ends far below it."""
    cfg = load_config(_config(tmp_path, pairs, "mae", steps=1000, time_limit=8.0, debug_step_delay=0.5,
                              anneal_by_time=by_time),
                      ["optim.schedule=poly", "optim.warmup_steps=1", "data.repeat=4", "train.precise_bn_images=0"])
    train(cfg, command="pytest")
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run_mae" / LOSS_LOG).read_text().splitlines()]
    assert 4 <= len(lrs) < 30
    if by_time:
        assert all(b < a for a, b in itertools.pairwise(lrs[1:])) and lrs[-1] < 0.5 * 3e-3
    else:
        assert lrs[-1] > 0.97 * 3e-3


def test_time_progress_caps_the_warm_up() -> None:
    """A time limit that ends inside the warm-up still ends at the floor; with the clock at 0 the schedule is the
    step schedule (ramp, then decay)."""
    from mafs_core.train import OptimConfig, _lr_lambda

    cfg = OptimConfig(schedule="poly", warmup_steps=50, min_lr_ratio=0.01)
    by_steps = _lr_lambda(cfg, 1000)
    assert by_steps(9) == pytest.approx(0.2) and by_steps(50) == pytest.approx(1.0) and by_steps(999) < 0.02
    assert _lr_lambda(cfg, 1000, lambda: 1.0)(9) == pytest.approx(0.01)
    assert _lr_lambda(cfg, 1000, lambda: 0.5)(9) == pytest.approx(0.2)  # the ramp is still below the decay
    assert _lr_lambda(cfg, 1000, lambda: 0.5)(100) == pytest.approx(0.01 + 0.99 * 0.5 ** 0.9)


def test_anneal_by_time_needs_a_time_limit(tmp_path: Path, pairs: Path) -> None:
    with pytest.raises(ValueError, match=r"anneal_by_time needs train\.time_limit"):
        load_config(_config(tmp_path, pairs, "mae", anneal_by_time=True))


@pytest.mark.timeout(240)
def test_trainable_prefixes_leave_the_rest_bit_identical(tmp_path: Path, pairs: Path, shared_data: Path) -> None:
    """train.trainable=[fusion]: the fusion head learns; every other tensor, BN statistics included, is unchanged."""
    from mafs_core.checkpoint import load_checkpoint, save_checkpoint
    from mafs_core.model import build_model

    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(init, build_model("mafs_t", num_classes=9))
    before = load_checkpoint(init)[0].state_dict()
    cfg = _config(tmp_path, pairs, "joint", shared_data / TEACHER, steps=6, init_from=str(init), trainable=["fusion"],
                  precise_bn_images=0)
    train(load_config(cfg), command="pytest")
    after = load_checkpoint(tmp_path / "run_joint" / "final.safetensors")[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("fusion.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("fusion.") and "running" not in k for k in changed), "the fusion weights learnt"
    with pytest.raises(ValueError, match=r"train.trainable: no module named \['fusoin'\]"):
        train(load_config(cfg, ["train.trainable=[fusoin]"]), command="pytest")


@pytest.mark.timeout(240)
def test_anchor_holds_the_fused_image_to_the_starting_weights(tmp_path: Path, pairs: Path, shared_data: Path) -> None:
    """loss.w_anchor: 0 while the fused image is the start's, positive once it moves, logged; needs a start."""
    from mafs_core.datasets import collate
    from mafs_core.train import Trainer

    # the shipped weights: a fresh network's fusion decoder starts deaf to the semantic features (PHF at identity)
    cfg_path = _config(tmp_path, pairs, "joint", shared_data / TEACHER, steps=4,
                       init_from=str(REPO / "weights" / "mafs_t.safetensors"), trainable=["seg"], precise_bn_images=0)
    anchored = ["loss.w_anchor=10", "model.overrides.vis_backbone=efficientnet_lite0"]
    trainer = Trainer(load_config(cfg_path, anchored))
    batch = collate([trainer.train_ds[i] for i in range(2)])
    trainer.model.eval()  # as validation runs it
    same = trainer.compute(batch, train=False)
    assert same.parts["f_anchor"] == 0.0
    with torch.no_grad():
        trainer.model.fusion.out.bias += 0.5
    moved = trainer.compute(batch, train=False)
    assert moved.parts["f_anchor"] > 0.01
    lc, p = trainer.cfg.loss, moved.parts
    terms = lc.w_int * p["f_int"] + lc.w_grad * p["f_grad"] + lc.w_ssim * p["f_ssim"]
    assert float(moved.tasks[0]) == pytest.approx(lc.fusion_weight * (terms + 10 * p["f_anchor"]), rel=1e-4)
    # a short run training only the segmentation decoder: its fused image drifts from the start's; the log shows it
    train(load_config(cfg_path, anchored), command="pytest")
    rows = [json.loads(r) for r in (tmp_path / "run_joint" / LOSS_LOG).read_text().splitlines()]
    assert len(rows) == 4 and rows[-1]["f_anchor"] > 0
    with pytest.raises(ValueError, match=r"loss\.w_anchor needs train\.init_from"):
        Trainer(load_config(cfg_path, [*anchored, "train.init_from=null"]))


def _popen(cfg: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mafs_core.train", str(cfg), "train.threads=1", *overrides, "--resume"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(300)
def test_resume_after_sigkill_gives_identical_losses(tmp_path: Path, pairs: Path) -> None:
    cfg = _config(tmp_path, pairs, "mae", steps=10, ckpt_every=4)
    a = _popen(cfg, f"train.out_dir={tmp_path / 'A'}")
    b = _popen(cfg, f"train.out_dir={tmp_path / 'B'}", "train.debug_step_delay=0.4")
    log_b = tmp_path / "B" / LOSS_LOG
    deadline = time.time() + 200
    while time.time() < deadline:  # kill B once it is past the checkpoint at step 4 (records 0..3)
        if log_b.is_file() and max(_losses_safe(log_b), default=-1) >= 5:
            break
        assert b.poll() is None, b.communicate()[0]
        time.sleep(0.02)
    os.kill(b.pid, signal.SIGKILL)
    b.wait()
    assert b.returncode == -signal.SIGKILL
    seen = max(_losses_safe(log_b))
    assert 5 <= seen < 9, "the run must be killed after the checkpoint and before the end"
    out_a = a.communicate(timeout=200)[0]
    assert a.returncode == 0, out_a
    b2 = _popen(cfg, f"train.out_dir={tmp_path / 'B'}")
    out_b = b2.communicate(timeout=200)[0]
    assert b2.returncode == 0, out_b
    assert "at step 4" in out_b
    la, lb = _losses(tmp_path / "A"), _losses(tmp_path / "B")
    assert sorted(la) == sorted(lb) == list(range(10))
    for step in range(4, 10):
        assert la[step] == lb[step], f"step {step}: {la[step]!r} != {lb[step]!r}"


def _losses_safe(path: Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


@pytest.mark.timeout(300)
def test_ddp_two_processes_gloo(tmp_path: Path, pairs: Path) -> None:
    cfg = _config(tmp_path, pairs, "mae", steps=3)
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mafs_core.train", str(cfg),
           f"train.out_dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s0 = json.loads((run / "summary_rank0.json").read_text())
    s1 = json.loads((run / "summary_rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and s0["steps"] == s1["steps"] == 3
    # ranks trained on different shards; identical weights afterwards prove the gradients were all-reduced
    assert s0["param_checksum"] == s1["param_checksum"]
    assert len(_losses(run)) == 3 and (run / "final.safetensors").is_file()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kd_kind", ["channel", "pixel"])
def test_joint_run_with_a_mafs_teacher_over_tta_views(tmp_path: Path, pairs: Path, kd_kind: str) -> None:
    """teacher.path may be a MAFS checkpoint (the shipped weights here, so it runs on a bare clone) with its
    test-time augmentation: KD (of either kind) and pseudo-labels come from it."""
    cfg_path = _config(tmp_path, pairs, "joint", REPO / "weights" / "mafs_t.safetensors", steps=4)
    summary = train(load_config(cfg_path, ["teacher.tta_scales=[0.75,1.0]", "teacher.tta_flip=true",
                                           f"loss.kd_kind={kd_kind}"]))
    rows = [json.loads(r) for r in (tmp_path / "run_joint" / LOSS_LOG).read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) and r["kd"] > 0 for r in rows)
    assert 0 <= summary["val"]["val/teacher_agreement_miou"] <= 1  # the log reads the student against it


def test_joint_run_rejects_bad_teacher_views_and_kd_kind(tmp_path: Path, pairs: Path) -> None:
    """Both are refused when the trainer starts, not at its first step."""
    cfg_path = _config(tmp_path, pairs, "joint", REPO / "weights" / "mafs_t.safetensors", steps=4)
    with pytest.raises(ValueError, match=r"tta_scales must include 1\.0"):
        train(load_config(cfg_path, ["teacher.tta_scales=[0.75]", f"train.out_dir={tmp_path / 'bad'}"]))
    with pytest.raises(ValueError, match=r"loss\.kd_kind must be one of"):
        train(load_config(cfg_path, ["loss.kd_kind=spatial", f"train.out_dir={tmp_path / 'bad_kd'}"]))
