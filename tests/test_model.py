"""MAFS network contract: shapes, ranges, colour restore, gradients, determinism, config round-trips."""

from __future__ import annotations

import json

import kornia.color
import pytest
import torch

from mafs_core.blocks import AFM, PHF
from mafs_core.model import MAFS, VARIANTS, MAFSConfig, build_model, restore_color

SIZES = [(64, 96), (61, 93), (100, 37)]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box has 2 cores and runs pytest -n 2
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models() -> dict[str, MAFS]:
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=9).eval() for name in VARIANTS}


def _inputs(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_joint_shapes_and_ranges(models, name):
    model = models[name]
    assert model.config.variant == name
    for b in (1, 3):
        for h, w in SIZES:
            ir, vis = _inputs(b, h, w)
            with torch.no_grad():
                out = model(ir, vis)
            assert set(out) == {"fused_y", "fused", "fusion_head", "logits", "aux_logits"}
            assert out["fused_y"].shape == (b, 1, h, w)
            assert out["fusion_head"].shape == (b, 2, h, w)  # the blend head the engine composes from
            assert out["fused"].shape == (b, 3, h, w)
            assert out["logits"].shape == (b, 9, h, w)
            assert out["aux_logits"] == []  # eval mode: no aux
            for k in ("fused_y", "fused", "logits"):
                assert out[k].dtype == torch.float32
                assert torch.isfinite(out[k]).all()
            for k in ("fused_y", "fused"):
                assert out[k].min() >= 0.0 and out[k].max() <= 1.0


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mae_shapes_and_ranges(models, name):
    ir, vis = _inputs(3, 61, 93)
    with torch.no_grad():
        out = models[name](ir, vis, mode="mae")
    assert set(out) == {"rec_ir", "rec_vis"}
    assert out["rec_ir"].shape == (3, 1, 61, 93)
    assert out["rec_vis"].shape == (3, 3, 61, 93)
    for v in out.values():
        assert v.min() >= 0.0 and v.max() <= 1.0


@pytest.mark.parametrize("num_classes", [2, 9, 20])
def test_any_class_count_and_aux_heads_in_training(num_classes):
    model = build_model("mafs_t", num_classes=num_classes).train()
    ir, vis = _inputs(2, 100, 37)
    out = model(ir, vis)
    assert out["logits"].shape == (2, num_classes, 100, 37)
    assert len(out["aux_logits"]) == 2
    assert all(a.shape == (2, num_classes, 100, 37) for a in out["aux_logits"])
    assert build_model("mafs_t", num_classes=num_classes, aux_heads=False).train()(ir, vis)["aux_logits"] == []
    assert model.eval()(ir, vis)["aux_logits"] == []


def test_restore_color_keeps_visible_chroma():
    g = torch.Generator().manual_seed(1)
    vis = torch.rand(2, 3, 17, 23, generator=g) * 0.6 + 0.2  # away from the gamut edges: no clamping
    ycbcr = kornia.color.rgb_to_ycbcr(vis)
    # The visible image's own luminance gives back the visible image.
    torch.testing.assert_close(restore_color(ycbcr[:, :1], vis), vis, atol=1e-6, rtol=0)
    # Another luminance: same as kornia's replace-Y round trip (whose constants are rounded to 3 digits),
    # chroma kept, luminance replaced.
    y = (ycbcr[:, :1] + 0.1 * (torch.rand(2, 1, 17, 23, generator=g) - 0.5)).clamp(0, 1)
    fused = restore_color(y, vis)
    reference = kornia.color.ycbcr_to_rgb(torch.cat([y, ycbcr[:, 1:]], 1)).clamp(0, 1)
    torch.testing.assert_close(fused, reference, atol=1e-3, rtol=0)
    out = kornia.color.rgb_to_ycbcr(fused)
    torch.testing.assert_close(out[:, :1], y, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 1:], ycbcr[:, 1:], atol=1e-5, rtol=0)
    # Out-of-gamut results are clamped to [0, 1]; a different luminance really changes the image.
    full = restore_color(torch.ones(2, 1, 17, 23), vis)
    assert full.min() >= 0 and full.max() <= 1
    assert (full - vis).abs().mean() > 0.1


def test_fused_output_uses_network_luminance(models):
    ir, vis = _inputs(1, 64, 96)
    with torch.no_grad():
        out = models["mafs_t"](ir, vis)
    torch.testing.assert_close(out["fused"], restore_color(out["fused_y"], vis))


@pytest.mark.parametrize("mode", ["joint", "mae"])
def test_gradients_reach_both_encoders(mode):
    torch.manual_seed(0)
    model = build_model("mafs_t", num_classes=4).train()
    ir, vis = _inputs(2, 64, 96)
    out = model(ir, vis, mode=mode)
    loss = sum(v.float().mean() for v in out.values() if torch.is_tensor(v))
    loss = loss + sum(a.mean() for a in out.get("aux_logits", []))
    loss.backward()
    for enc in (model.enc_ir, model.enc_vis):
        for part in (enc.sfe, enc.stages[0], enc.stages[3]):
            grads = [p.grad for p in part.parameters()]
            assert all(gr is not None for gr in grads)
            assert sum(gr.abs().sum() for gr in grads) > 0
    # Both inputs influence the outputs (cross-modal paths are connected).
    ir.requires_grad_(True)
    vis.requires_grad_(True)
    out = model.eval()(ir, vis, mode=mode)
    gi, gv = torch.autograd.grad(sum(v.sum() for v in out.values() if torch.is_tensor(v)), (ir, vis))
    assert gi.abs().sum() > 0 and gv.abs().sum() > 0


def test_eval_is_deterministic_and_batch_independent(models):
    model = models["mafs_s"]
    ir, vis = _inputs(3, 61, 93)
    with torch.no_grad():
        a = model(ir, vis)
        b = model(ir, vis)
        one = model(ir[1:2], vis[1:2])
    for k in ("fused_y", "fused", "logits"):
        assert torch.equal(a[k], b[k])
        torch.testing.assert_close(a[k][1:2], one[k], atol=1e-4, rtol=1e-4)


def test_deploy_matches_eager():
    torch.manual_seed(0)
    model = build_model("mafs_t", num_classes=9).eval()
    with torch.no_grad():  # give BN non-trivial statistics so folding is really tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
    ir, vis = _inputs(2, 64, 96)
    with torch.no_grad():
        ref = model(ir, vis)
        out = model.deploy()(ir, vis)
    for k in ("fused_y", "fused", "logits"):
        torch.testing.assert_close(out[k], ref[k], atol=2e-4, rtol=1e-3)
    with pytest.raises(RuntimeError, match="eval"):
        build_model("mafs_t").train().fuse_bn()


def test_reflect_padding_and_export_static():
    model = build_model("mafs_t", num_classes=3, pad_mode="reflect").eval()
    ir, vis = _inputs(1, 64, 70)
    with torch.no_grad():
        out = model(ir, vis)
    assert out["logits"].shape == (1, 3, 64, 70)
    # torch.export fails on data-dependent Python control flow: this guards ONNX / torch.compile friendliness.
    ep = torch.export.export(model, (ir, vis))
    with torch.no_grad():
        res = ep.module()(ir, vis)
    torch.testing.assert_close(res["logits"], out["logits"])


def test_config_round_trip_and_errors():
    model = build_model("mafs_t", num_classes=5, dec_dim=48)
    d = json.loads(json.dumps(model.config.to_dict()))  # lists after JSON
    cfg = MAFSConfig.from_dict(d)
    assert cfg == model.config and cfg.widths == (16, 32, 64, 128) and cfg.num_classes == 5
    MAFS(cfg).load_state_dict(model.state_dict())  # same architecture
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("mafs_xl")
    with pytest.raises(ValueError, match="unknown MAFSConfig keys"):
        MAFSConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="cam_pool"):
        build_model("mafs_s", cam_pool=(1, 1, 4, 1))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mafs_t", num_classes=0)
    ir, vis = _inputs(1, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        model(ir, vis, mode="seg")
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        model(vis, vis)
    with pytest.raises(ValueError, match="share"):
        model(ir, vis[:, :, :16])


def test_blocks_match_their_reference_formulas():
    """The speed rewrites in AFM/PHF compute exactly the paper-style formulas."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 8, 16, 20, generator=g), torch.randn(2, 8, 16, 20, generator=g)
    afm = AFM(8)
    w = torch.softmax(torch.cat([torch.zeros(2, 1, 16, 20), -afm.weight(torch.cat([a, b], 1))], 1), 1)
    torch.testing.assert_close(afm(a, b), w[:, :1] * a + w[:, 1:] * b, atol=1e-5, rtol=1e-5)
    phf = PHF(8, 12, 16)
    torch.nn.init.normal_(phf.scale.weight, std=0.1)
    torch.nn.init.normal_(phf.shift.weight, std=0.1)
    phf.norm.running_mean.uniform_(-1, 1)
    phf.norm.running_var.uniform_(0.5, 2)
    phf.eval()
    s = torch.randn(2, 12, 8, 10, generator=g)
    with torch.no_grad():
        h = phf.shared(s)
        up = lambda t: torch.nn.functional.interpolate(t, size=(16, 20), mode="bilinear")  # noqa: E731
        ref = phf.norm(a) * up(phf.scale(h)) + up(phf.shift(h))
        torch.testing.assert_close(phf(a, s), ref, atol=1e-5, rtol=1e-5)


def test_blend_head_spans_source_luminances() -> None:
    """The blend head passes source pixels through: a=1 gives the thermal image, a=0 the visible luminance."""
    m = build_model("mafs_t").eval()
    assert m.config.fusion_head == "blend"
    g = torch.Generator().manual_seed(3)
    ir, vis = torch.rand(1, 1, 64, 96, generator=g), torch.rand(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        m.fusion.out.weight.zero_()
        for share, want in ((30.0, ir), (-30.0, kornia.color.rgb_to_y(vis))):
            m.fusion.out.bias.copy_(torch.tensor([share, 0.0]))
            assert torch.allclose(m(ir, vis)["fused_y"], want, atol=1e-6)


def test_direct_head_checkpoints_still_build() -> None:
    """Checkpoints saved before `fusion_head` existed store no such field: they rebuild the sigmoid head."""
    cfg = build_model("mafs_t").config.to_dict()
    cfg.pop("fusion_head")
    old = MAFS(MAFSConfig.from_dict(cfg))
    assert old.fusion.out.out_channels == 1
    y = old.eval()(torch.rand(1, 1, 32, 32), torch.rand(1, 3, 32, 32))["fused_y"]
    assert y.shape == (1, 1, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1
