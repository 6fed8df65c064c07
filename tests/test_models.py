"""GReFEL model presets: shapes, gradients, frozen landmarks, reliability equations, export."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from grefel.errors import ConfigError, WeightsError
from grefel.fileio import load_state_dict
from grefel.models import (
    FaceBaselineConfig,
    GReFELConfig,
    GReFELViTConfig,
    PlainCNNConfig,
    PlainCNNEnsembleConfig,
    create_model,
    ensemble_from_checkpoints,
    kappa,
    list_models,
    model_config,
    model_spec,
)
from grefel.models.ir import IRBackbone, load_ir50
from grefel.models.mobilefacenet import MobileFaceNet
from grefel.models.pretrained import load_landmark_weights
from grefel.models.reliability import ReliabilityHead
from grefel.models.serving import ServingModel

# Tiny sizes per config family, so every registered preset is exercised in seconds.
TINY = {
    # Input, image branch and landmark branch at three sizes, so every resampling path runs.
    GReFELConfig: dict(input_size=48, branch_size=32, landmark_size=64, ir_stem=8, ir_widths=(8, 16, 32), ir_units=(1, 1, 1),
                       vgg_widths=(8, 8, 16, 16), cross_heads=(1, 2, 2), embed_dim=32, num_heads=2, num_anchors=3),
    GReFELViTConfig: dict(input_size=32, landmark_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                          cross_heads=2, num_anchors=3),
    PlainCNNConfig: dict(input_size=32, widths=(8, 16, 16, 32)),
    PlainCNNEnsembleConfig: dict(input_size=32, widths=(8, 16, 16, 32), members=2),
    FaceBaselineConfig: dict(input_size=32),  # the dlib branch keeps its pretrained sizes
}
PRESETS = list_models()
# Presets with the frozen landmark branch and the reliability head (all but the plain baselines).
PLAIN_CONFIGS = (PlainCNNConfig, PlainCNNEnsembleConfig, FaceBaselineConfig)
GREFEL_PRESETS = [n for n in PRESETS if model_spec(n).config_class not in PLAIN_CONFIGS]
FROZEN_PREFIXES = ("landmarks.", "face.")  # the frozen landmark network and the frozen stages of the dlib branch


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**TINY[model_spec(name).config_class], **overrides})


def batch_for(model, n: int = 4) -> torch.Tensor:
    c = model.config
    return torch.rand(n, c.in_chans, c.input_size, c.input_size, generator=torch.Generator().manual_seed(1))


def test_every_preset_has_tiny_sizes():
    assert {model_spec(n).config_class for n in PRESETS} <= set(TINY)
    assert {"grefel_paper", "grefel_small", "grefel_vgg", "grefel_vit", "cnn_baseline"} <= set(PRESETS)


def test_cnn_baseline_is_grefel_vgg_image_branch():
    # The baseline comparison in the README only measures GReFEL's additions if the image branches match.
    assert tuple(model_config("grefel_vgg").vgg_widths) == tuple(model_config("cnn_baseline").widths)
    grefel, cnn = create_model("grefel_vgg"), create_model("cnn_baseline")
    assert [tuple(p.shape) for p in grefel.image_backbone.parameters()] == [tuple(p.shape) for p in cnn.features.parameters()]
    x = torch.rand(2, 3, 48, 48)
    maps = grefel.image_backbone(grefel.input_spec.image_input(x))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 12, 12), (128, 6, 6), (256, 3, 3)]  # the 12/6/3 windows


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_shapes_finite_and_distributions(name, training):
    model = tiny(name).train(training)
    out = model(batch_for(model), trust=0.5)
    C = model.config.num_classes
    assert out.logits.shape == out.primary.shape == out.corrected.shape == (4, C)
    for t in (out.logits, out.corrected, out.embedding):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(out.corrected.sum(-1), torch.ones(4))
    torch.testing.assert_close(out.primary.sum(-1), torch.ones(4))
    if name in GREFEL_PRESETS:
        assert out.anchor.shape == (4, C) and out.anchor_distances.shape == (4, C, model.config.num_anchors)
        assert out.embedding.shape == (4, model.config.embed_dim) and torch.isfinite(out.confidence).all()
        assert (out.attentive is not None) == training


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_preset_forward(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(batch_for(model, 2))
    assert out.corrected.shape == (2, 8) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", PRESETS)
def test_backward_reaches_every_trainable_parameter_and_no_frozen_one(name):
    model = tiny(name).train()
    out = model(batch_for(model), trust=0.5)
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 8).float()
    from grefel.engine.losses import GReFELLoss
    anchors = model.reliability.anchors if name in GREFEL_PRESETS else None
    loss, _ = GReFELLoss()(out, target, anchors, trust=0.5)
    loss.backward()
    for pname, p in model.named_parameters():
        if pname.startswith(FROZEN_PREFIXES):
            assert not p.requires_grad and p.grad is None, pname
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient reaches {pname}"
            assert p.grad.abs().sum() > 0, f"zero gradient at {pname}"


@pytest.mark.parametrize("name", GREFEL_PRESETS)
def test_landmark_branch_frozen_through_an_optimizer_step(name):
    model = tiny(name)
    model.train()
    assert not model.landmarks.training and not any(m.training for m in model.landmarks.modules())
    before = {k: v.clone() for k, v in model.landmarks.state_dict().items()}
    other_before = model.head[0].weight.clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(batch_for(model), trust=1.0).corrected.sum().backward()
    model(batch_for(model), trust=1.0).logits.pow(2).mean().backward()
    opt.step()
    for k, v in model.landmarks.state_dict().items():
        assert torch.equal(v, before[k]), f"landmark tensor {k} changed"
    assert not torch.equal(model.head[0].weight, other_before)


@pytest.mark.parametrize("name", PRESETS)
def test_eval_prediction_independent_of_batch(name):
    model = tiny(name).eval()
    x = batch_for(model, 6)
    with torch.no_grad():
        alone = model(x[:1])
        together = model(x)
        shuffled = model(x.flip(0))
    torch.testing.assert_close(alone.corrected[0], together.corrected[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.corrected[0], shuffled.corrected[-1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone.logits[0], together.logits[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", PRESETS)
def test_trace_and_onnx_export(name, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    serving = ServingModel(tiny(name), serve="corrected", temperature=1.3)
    x = batch_for(serving.model, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(serving, x[:2])
        path = tmp_path / f"{name}.onnx"
        serving.export_onnx(path, tuple(x[:2].shape))
    with torch.no_grad():
        expected = serving(x).numpy()
    np.testing.assert_allclose(traced(x).detach().numpy(), expected, atol=1e-5)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)  # dynamic batch: exported at 2, run at 3


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("shape", [(3, "S", "S"), (2, 3, "S"), (2, 3, 31, "S"), (2, 2, "S", "S"), (2, 1, "S", "S")])
def test_wrong_input_is_a_value_error_naming_the_expected_shape(name, shape):
    model = tiny(name).eval()
    S = model.config.input_size
    with pytest.raises(ValueError, match=rf"expects input of shape \(B, 3, {S}, {S}\)"):
        model(torch.rand(*[S if d == "S" else d for d in shape]))


def test_grey_input_preset():
    model = tiny("grefel_small", in_chans=1).eval()
    out = model(torch.rand(2, 1, 48, 48))
    assert out.corrected.shape == (2, 8)


def test_paper_feature_extractor_within_3_percent_of_poster_pp():
    model = create_model("grefel_paper", pretrained=False)
    assert abs(model.feature_extractor_parameters() / 43.7e6 - 1) < 0.03
    assert model.config.windows == (28, 14, 7) and model.config.embed_dim == 768
    assert model.config.num_anchors == 10 and model.config.cross_heads == (2, 4, 8)


# ---- reliability equations ------------------------------------------------------------------

def test_kappa_extremes():
    assert kappa(torch.tensor([0.0, 1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert kappa(torch.full((8,), 1 / 8)).item() == pytest.approx(0.0, abs=1e-6)


def test_trust_zero_gives_exactly_the_primary_distribution():
    model = tiny("grefel_small").train()
    out = model(batch_for(model), trust=0.0)
    assert torch.equal(out.corrected, out.primary)


def test_reliability_equations_by_hand():
    """Two classes, two anchors per class, D = 2, batch of two, every number worked out below."""
    head = ReliabilityHead(dim=2, num_classes=2, num_anchors=2, tau=2.0, delta=1.0, attention_heads=1)
    with torch.no_grad():
        head.anchors.copy_(torch.tensor([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 2.0]]]))
        for lin in (head.query, head.key, head.value, head.out):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])

    def softmax(v):
        m = [math.exp(a) for a in v]
        return [a / sum(m) for a in m]

    def conf(p):
        return 1 + sum(a * math.log(a) for a in p if a > 0) / math.log(len(p))

    def anchor_dist(x):
        d = [[math.dist(x, a) for a in cls] for cls in [[(0, 0), (3, 4)], [(1, 0), (0, 2)]]]
        s = softmax([-v for row in d for v in row])
        return [s[0] + s[1], s[2] + s[3]]

    # Attention across the batch: q = k = v = e (identity maps), scale 1/sqrt(2).
    rows = []
    for qi in e.tolist():
        w = softmax([(qi[0] * kj[0] + qi[1] * kj[1]) / math.sqrt(2) for kj in e.tolist()])
        rows.append(softmax([sum(w[j] * e[j, c].item() for j in range(2)) for c in range(2)]))

    t = 0.25
    expected = []
    for i in range(2):
        l_p = softmax([z / 2.0 for z in logits[i].tolist()])
        l_g, l_a = anchor_dist(e[i].tolist()), rows[i]
        c_p, c_g, c_a = conf(l_p), conf(l_g), conf(l_a)
        l_c = [(c_g * g + c_a * a) / (c_g + c_a) for g, a in zip(l_g, l_a)]
        l_f = [c_p * p + (1 - c_p) * c for p, c in zip(l_p, l_c)]
        expected.append([(1 - t) * p + t * f for p, f in zip(l_p, l_f)])

    head.train()
    out = head(e, logits, trust=t)
    torch.testing.assert_close(out.corrected, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    # Sample 0 sits on an anchor of class 0 at distance 0 and 1 from class-1 anchors.
    torch.testing.assert_close(out.anchor_distances[0], torch.tensor([[0.0, 5.0], [1.0, 2.0]]))

    head.eval()
    out = head(e, logits)
    l_p = softmax([1.0, 0.0])
    l_g = anchor_dist([0.0, 0.0])
    c_p = conf(l_p)
    torch.testing.assert_close(out.corrected[0], torch.tensor([c_p * p + (1 - c_p) * g for p, g in zip(l_p, l_g)]))


# ---- weights -------------------------------------------------------------------------------

def test_landmark_weights_load_strictly_and_give_plausible_landmarks(landmark_weights, ferplus_root):
    state = load_state_dict(landmark_weights)
    assert len(state) == 333
    net = MobileFaceNet().eval()
    net.load_state_dict(state, strict=True)
    names = sorted(p.name for p in (ferplus_root / "FER2013Valid").glob("*.png"))[:64]
    imgs = [cv2.imread(str(ferplus_root / "FER2013Valid" / n), cv2.IMREAD_GRAYSCALE) for n in names]
    x = torch.from_numpy(np.stack(imgs)).float().div(255)[:, None].repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        pts = net(x)                                                   # (B, 68, 2) in [0, 1]
        f1, f2, f3 = net.features(x)
    assert f1.shape[1:] == (64, 28, 28) and f2.shape[1:] == (128, 14, 14) and f3.shape[1:] == (512, 7, 7)
    # fer0028642: a face wholly inside its crop. FERPlus crops are tight and often cut the chin,
    # so over the others only the jaw line may leave the crop, and by little.
    assert ((pts[4] > 0) & (pts[4] < 1)).all()
    assert ((pts > -0.06) & (pts < 1.06)).all()
    inner = pts[:, 17:]                                                # brows, eyes, nose, mouth
    assert ((inner > 0) & (inner < 1)).all()
    eyes_y = pts[:, 36:48, 1].mean(1)
    mouth_y = pts[:, 48:68, 1].mean(1)
    assert (eyes_y < mouth_y - 0.15).all()
    nose_x = pts[:, 30, 0]                                             # profiles put single noses off-centre
    assert 0.4 < nose_x.median() < 0.6


def test_poster_pth_tar_landmark_checkpoint_loads(landmark_weights, tmp_path):
    state = load_state_dict(landmark_weights)
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    torch.save({"state_dict": state}, path)
    model = tiny("grefel_small")
    load_landmark_weights(model, path)
    assert torch.equal(model.landmarks.net.conv1.conv.weight, state["conv1.conv.weight"])


def test_landmark_weights_with_missing_keys_name_them(landmark_weights, tmp_path):
    state = load_state_dict(landmark_weights)
    del state["conv_4.model.0.conv.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing conv_4.model.0.conv.conv.weight"):
        load_landmark_weights(tiny("grefel_small"), path)


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(path)


def _flat_ir50_state(backbone: IRBackbone) -> dict[str, torch.Tensor]:
    """A face.evoLVe-layout IR-50 state_dict: flat body.N units, plus stage 4 and output_layer."""
    state = {}
    offsets = {"body1": 0, "body2": 3, "body3": 7}
    for key, value in backbone.state_dict().items():
        stage, _, rest = key.partition(".")
        if stage in offsets:
            unit, _, tail = rest.partition(".")
            key = f"body.{offsets[stage] + int(unit)}.{tail}"
        state[f"module.{key}"] = value.clone()
    state["module.body.21.res_layer.1.weight"] = torch.zeros(512, 256, 3, 3)
    state["module.output_layer.3.weight"] = torch.zeros(512, 25088)
    return state


def test_ir50_flat_layout_maps_and_reports_counts():
    source = IRBackbone()
    target = IRBackbone()
    report = load_ir50(target, _flat_ir50_state(source))
    assert report["loaded"] == len(target.state_dict()) and report["skipped"] == 2 and report["missing"] == 0
    assert torch.equal(target.body3[13].res_layer[1].weight, source.body3[13].res_layer[1].weight)


def test_ir50_partial_load_is_an_error_unless_asked():
    state = _flat_ir50_state(IRBackbone())
    del state["module.body.20.res_layer.1.weight"]
    with pytest.raises(WeightsError, match="missing 1"):
        load_ir50(IRBackbone(), state)
    assert load_ir50(IRBackbone(), state, allow_partial=True)["missing"] == 1


def test_vit_state_dict_loads_into_grefel_vit():
    source = tiny("grefel_vit")
    state = {k: v for k, v in source.state_dict().items()
             if k.startswith(("patch_embed.", "blocks.", "norm.", "cls_token", "pos_embed"))}
    state["head.weight"] = torch.zeros(1000, 32)
    target = tiny("grefel_vit")
    report = target.load_vit(state)
    assert report == {"loaded": len(state) - 1, "skipped": 1}
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    del state["blocks.0.attn.qkv.weight"]
    with pytest.raises(WeightsError, match="blocks.0.attn.qkv.weight"):
        tiny("grefel_vit").load_vit(state)


@pytest.mark.parametrize("serve", ["primary", "corrected"])
def test_serving_tta_averages_image_and_mirror(serve):
    model = tiny("grefel_small").eval()
    x = batch_for(model, 3)
    with torch.no_grad():
        got = ServingModel(model, serve, temperature=1.5, tta_flip=True)(x)
        a, b = model(x), model(x.flip(-1))
    if serve == "primary":
        expected = torch.softmax((a.logits + b.logits) / 2 / 1.5, -1)
    else:
        expected = torch.softmax(((a.corrected + b.corrected) / 2).log() / 1.5, -1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# face_baseline has no batch norm to fold: dlib's affine layers are folded into its convs at conversion.
@pytest.mark.parametrize("name", [n for n in PRESETS if model_spec(n).config_class is not FaceBaselineConfig])
def test_fold_batchnorm_keeps_the_outputs(name):
    from grefel.models.serving import fold_batchnorm

    model = tiny(name).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # batch norms that are far from the identity, or folding them proves nothing
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.copy_(torch.randn(n, generator=g))
            bn.bias.copy_(torch.randn(n, generator=g))
    x = batch_for(model)
    count = lambda: sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # noqa: E731
    before_count = count()
    with torch.no_grad():
        before = model(x).logits
        after = fold_batchnorm(model)(x).logits
    assert count() < before_count
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def _cnn_file(path, seed: int, noise: float | None = 0.2, **overrides):
    """A tiny cnn_baseline model file: its weights all drawn from N(0, noise), or without `noise` initialised
    as for training (features with some signal) from `seed`."""
    from grefel.config import to_dict
    from grefel.labels import CANONICAL_CLASSES
    from grefel.models.model_file import save_model_checkpoint

    model = tiny("cnn_baseline", **overrides).eval()
    torch.manual_seed(seed)
    if noise is None:
        model = create_model("cnn_baseline", **{**TINY[PlainCNNConfig], **overrides}).eval()
    for p in model.parameters() if noise else ():      # members that differ, or averaging them proves nothing
        p.data.normal_(0, noise)
    save_model_checkpoint(path, model, {
        "preset": "cnn_baseline", "model": to_dict(model.config), "class_names": list(CANONICAL_CLASSES),
        "input": {"size": 32, "channels": 3}, "preprocessing": {"color": "grey", "crop_size": 32},
        "serve": "primary", "temperature": 1.3, "training": {"data": {"train_class_counts": [9, 8, 7, 6, 5, 1, 2, 1]}}})
    return model


def test_cnn_ensemble_averages_its_members_logits_and_round_trips_through_a_model_file(tmp_path):
    from grefel.commands import main
    from grefel.models import build_from_checkpoint

    members = [_cnn_file(tmp_path / f"m{i}", seed=i) for i in range(3)]
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(3)]
    ensemble, info = ensemble_from_checkpoints(paths)
    x = batch_for(members[0], 5)
    with torch.no_grad():
        expected = torch.stack([m(x).logits for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x).logits, expected)
    assert info["preset"] == "cnn_ensemble" and info["model"]["members"] == 3
    assert info["temperature"] == 1.0 and "logit_adjustment" not in info   # to be fitted on the ensemble
    assert info["training"]["data"]["train_class_counts"] == [9, 8, 7, 6, 5, 1, 2, 1]
    assert [m["path"] for m in info["ensemble"]] == paths
    # The command writes one model file that builds the same model.
    assert main(["model", "ensemble", *paths, "--output", str(tmp_path / "ens")]) == 0
    rebuilt, saved = build_from_checkpoint(tmp_path / "ens.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, expected)
    assert saved["training"]["command"].startswith("grefel model ensemble")
    # `grefel model list` shows it; no run trained it, so its figures are those of its calibration.
    from grefel.commands.model import find_checkpoints
    from grefel.models.model_file import update_checkpoint_info
    row = lambda: next(r for r in find_checkpoints([str(tmp_path)]) if r["path"].endswith("ens.safetensors"))  # noqa: E731
    assert row()["preset"] == "cnn_ensemble" and row()["accuracy"] is None and row()["figures"] is None
    update_checkpoint_info(tmp_path / "ens.safetensors", {**saved, "calibration": {
        "split": "valid", "accuracy": 0.5, "mean_class_accuracy": 0.4, "ece_before": 0.1, "ece_after": 0.02}})
    assert (row()["accuracy"], row()["mean_class_accuracy"], row()["ece"], row()["figures"]) == \
        (0.5, 0.4, 0.02, "calibration (valid)")
    # A trained file shows its run's figures until calibrated; then what it serves (adjusted, scaled).
    member = lambda: next(r for r in find_checkpoints([str(tmp_path)]) if r["path"] == paths[0])  # noqa: E731
    _, member_info = build_from_checkpoint(paths[0])
    update_checkpoint_info(paths[0], {**member_info, "metrics": {"valid": {"accuracy": 0.3, "ece": 0.2}}})
    assert (member()["accuracy"], member()["ece"], member()["figures"]) == (0.3, 0.2, "training")
    update_checkpoint_info(paths[0], {**member_info, "metrics": {"valid": {"accuracy": 0.3, "ece": 0.2}},
                                      "calibration": {"split": "valid", "accuracy": 0.35, "ece_after": 0.01}})
    assert (member()["accuracy"], member()["ece"], member()["figures"]) == (0.35, 0.01, "calibration (valid)")


def test_a_member_of_an_ensemble_comes_back_as_its_own_model_file(tmp_path, capsys):
    from grefel.commands import main
    from grefel.models import build_from_checkpoint, ensemble_member

    members = [_cnn_file(tmp_path / f"m{i}", seed=i) for i in range(3)]
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(3)]
    assert main(["model", "ensemble", *paths, "--output", str(tmp_path / "ens")]) == 0
    x = batch_for(members[0], 5)
    for index in (1, 3):
        assert main(["model", "member", str(tmp_path / "ens.safetensors"), "--index", str(index),
                     "--output", str(tmp_path / f"back{index}")]) == 0
        back, info = build_from_checkpoint(tmp_path / f"back{index}.safetensors")
        with torch.no_grad():
            torch.testing.assert_close(back(x).logits, members[index - 1](x).logits)
        assert info["preset"] == "cnn_baseline" and info["temperature"] == 1.0
        assert info["member_of"]["member"] == index and info["member_of"]["of"] == 3
        assert info["training"]["data"]["train_class_counts"] == [9, 8, 7, 6, 5, 1, 2, 1]
    # Members taken out make the same ensemble again.
    again, _ = ensemble_from_checkpoints([str(tmp_path / f"back{i}.safetensors") for i in (1, 3)])
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, (members[0](x).logits + members[2](x).logits) / 2)
    capsys.readouterr()
    assert main(["model", "member", str(tmp_path / "ens.safetensors"), "--index", "4", "--output",
                 str(tmp_path / "x")]) == 2
    assert "member 4: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="a cnn_baseline model file, not an ensemble"):
        ensemble_member(paths[0], 1)


def test_cnn_ensemble_refuses_members_that_do_not_match(tmp_path):
    _cnn_file(tmp_path / "a", seed=0)
    _cnn_file(tmp_path / "wide", seed=1, widths=(8, 16, 16, 64))
    a, wide = str(tmp_path / "a.safetensors"), str(tmp_path / "wide.safetensors")
    with pytest.raises(ConfigError, match=r"wide.safetensors: its 'model' differs from .*a.safetensors"):
        ensemble_from_checkpoints([a, wide])
    # Files written before a module move describe the alignment in other words: the numbers decide.
    from grefel.fileio import read_pair, write_pair
    tensors, info = read_pair(tmp_path / "a")
    write_pair(tmp_path / "old", tensors, {**info, "preprocessing": {**info["preprocessing"], "alignment": "older words"}})
    ensemble_from_checkpoints([a, str(tmp_path / "old.safetensors")])
    write_pair(tmp_path / "rgb", tensors, {**info, "preprocessing": {**info["preprocessing"], "color": "rgb"}})
    with pytest.raises(ConfigError, match="its 'preprocessing' differs"):
        ensemble_from_checkpoints([a, str(tmp_path / "rgb.safetensors")])
    with pytest.raises(ConfigError, match="at least two model files, got 1"):
        ensemble_from_checkpoints([a])
    ensemble, info = ensemble_from_checkpoints([a, a])   # the same file twice is allowed (and pointless)
    from grefel.models.model_file import save_model_checkpoint
    save_model_checkpoint(tmp_path / "ens", ensemble, info)
    with pytest.raises(ConfigError, match=r"ens.safetensors: a cnn_ensemble model file; cnn_ensemble averages cnn_baseline"):
        ensemble_from_checkpoints([str(tmp_path / "ens.safetensors"), a])


# ---------------------------------------------------------------- refit: the linear classifier on frozen features


def test_logistic_regression_fit_is_scikit_learns():
    from sklearn.linear_model import LogisticRegression

    from grefel.training.refit import fit_logistic_regression

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 1.5
    y = torch.arange(200) % 4
    x = (centres[y] + torch.randn(200, 6, generator=g)).double()
    for c in (0.01, 1.0):
        w, b = fit_logistic_regression(x, y, 4, c, tol=1e-9)
        reference = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(x.numpy(), y.numpy())
        np.testing.assert_allclose(torch.softmax(x @ w.T + b, 1).numpy(),
                                   reference.predict_proba(x.numpy()), atol=1e-5)
        # From another start, to the default tolerance: the same fit (the objective is strictly convex).
        again = fit_logistic_regression(x, y, 4, c, start=(torch.randn(4, 6, generator=g), torch.ones(4)))
        torch.testing.assert_close(torch.softmax(x @ again[0].T + again[1], 1), torch.softmax(x @ w.T + b, 1),
                                   atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="C = 0: expected a finite number > 0"):
        fit_logistic_regression(x, y, 4, 0.0)


def test_cross_validation_picks_the_penalty_that_generalises():
    from grefel.training.refit import best_c, cross_validate_c

    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    # Clean and separable: every C is right on every held-out face, and the tie goes to the strongest penalty.
    x = torch.nn.functional.one_hot(y, 3).double() * 5 + 0.1 * torch.randn(120, 3, generator=g)
    scores = cross_validate_c([x], y, 3, [1.0, 1e-6, 0.1], folds=4)
    (head,) = scores.heads
    assert sorted(head) == [1e-6, 0.1, 1.0] and best_c(head) == 1e-6 and set(head.values()) == {1.0}
    assert scores.combined == head                  # one feature set: its logits are the mean
    # Imbalanced: a penalty so strong it leaves only the (unpenalised) bias predicts the frequent class for all.
    y = torch.cat([torch.zeros(80, dtype=torch.long), torch.arange(40) % 2 + 1])
    x = torch.nn.functional.one_hot(y, 3).double() + torch.randn(120, 3, generator=g) * 0.3
    head = cross_validate_c([x], y, 3, [1e-6, 10.0], folds=4).heads[0]
    assert best_c(head) == 10.0 and head[1e-6] == 80 / 120 and head[10.0] > 0.95
    with pytest.raises(ConfigError, match="folds = 1: expected at least 2"):
        cross_validate_c([x], y, 3, [1.0], folds=1)
    with pytest.raises(ConfigError, match="C = -1 in the grid: expected finite numbers > 0"):
        cross_validate_c([x], y, 3, [1.0, -1.0])


def test_cross_validation_scores_an_ensemble_by_its_mean_logits():
    from grefel.training.refit import cross_validate_c, fit_logistic_regression

    g = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 3
    signal = torch.nn.functional.one_hot(y, 3).double()
    # Two views of the same faces, each with its own noise: averaging their classifiers' logits beats either.
    xs = [signal + torch.randn(300, 3, generator=g) * 0.9 for _ in range(2)]
    scores = cross_validate_c(xs, y, 3, [0.1], folds=3, seed=4)
    assert scores.combined[0.1] > max(head[0.1] for head in scores.heads) + 0.03
    # It is the held-out accuracy of the summed logits of the two fits on the other folds.
    fold_of = torch.empty(300, dtype=torch.long)
    rng = np.random.default_rng(4)
    for k in range(3):
        members = np.flatnonzero(y.numpy() == k)
        fold_of[torch.from_numpy(rng.permutation(members))] = torch.arange(len(members)) % 3
    correct = 0
    for fold in range(3):
        held = fold_of == fold
        fits = [fit_logistic_regression(x[~held], y[~held], 3, 0.1) for x in xs]
        logits = sum(x[held] @ w.T + b for x, (w, b) in zip(xs, fits))
        correct += int((logits.argmax(1) == y[held]).sum())
    assert scores.combined[0.1] == pytest.approx(correct / 300, abs=1 / 300)


@pytest.fixture(scope="module")
def refit_csv_root(ferplus_root, tmp_path_factory):
    """train.csv of 320 real FERPlus faces (the valid split's first, majority labels), for refit runs."""
    from grefel.data import DataSource, load_dataset

    root = tmp_path_factory.mktemp("refit-csv")
    ds = load_dataset(DataSource(root=str(ferplus_root), cache_dir=str(root / "cache")), "valid", "majority")
    rows = [f"{ds.labels[i]},{' '.join(map(str, ds.images[i].reshape(-1).tolist()))}" for i in range(320)]
    (root / "train.csv").write_text("emotion,pixels\n" + "\n".join(rows) + "\n")
    return root


def test_refit_replaces_each_linear_head_by_the_cross_validated_fit_and_leaves_the_backbone(
        tmp_path, refit_csv_root, cache_dir):
    from grefel.commands import main
    from grefel.data import DataSource, eval_transform, load_dataset
    from grefel.fileio import read_pair
    from grefel.models import build_from_checkpoint
    from grefel.training.refit import best_c, cross_validate_c, fit_logistic_regression, frozen_embeddings

    for i in range(2):
        _cnn_file(tmp_path / f"m{i}", seed=i, noise=None)
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(2)]
    assert main(["model", "ensemble", *paths, "--output", str(tmp_path / "ens")]) == 0
    flags = ["--format", "csv", "--data-root", str(refit_csv_root), "--c-grid", "0.01", "1", "--folds", "3"]
    assert main(["model", "refit", paths[0], "--output", str(tmp_path / "r0"), *flags]) == 0
    assert main(["model", "refit", str(tmp_path / "ens.safetensors"), "--output", str(tmp_path / "rens"), *flags,
                 "--c-by", "head"]) == 0

    # What was written is the logistic regression of the frozen (flip-free: the files serve no flip) embeddings.
    model, _ = build_from_checkpoint(paths[0])
    ds = load_dataset(DataSource(format="csv", root=str(refit_csv_root)), "train")
    ds.transform = eval_transform(32, 3)
    x, y = frozen_embeddings(model, ds, tta_flip=False), torch.from_numpy(ds.labels)
    z = (x - x.mean(0)) / x.std(0)                  # a fresh network's embedding has scale ~1e-3: standardised
    scores = cross_validate_c([z], y, 8, [0.01, 1.0], folds=3).heads[0]
    c = best_c(scores)
    w, b = fit_logistic_regression(z, y, 8, c)
    w, b = w / x.std(0), b - (w / x.std(0)) @ x.mean(0)
    refitted, info = build_from_checkpoint(tmp_path / "r0.safetensors")
    torch.testing.assert_close(refitted.fc.weight, w.float())
    torch.testing.assert_close(refitted.fc.bias, b.float())
    before, _ = read_pair(tmp_path / "m0")
    after, _ = read_pair(tmp_path / "r0")
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"fc.weight", "fc.bias"}
    fitted_accuracy = float(((x @ w.T + b).argmax(1) == y).double().mean())
    with torch.no_grad():    # the random head the file had (eval mode: the logits are fc of the embedding)
        assert fitted_accuracy > float((model.fc(x.float()).argmax(1) == y).double().mean())
    assert fitted_accuracy > float(torch.bincount(y).max()) / len(y)        # more than the frequent class alone
    refit = info["training"]["refit"]
    assert refit["heads"] == [{"C": c, "cv_accuracy": {f"{k:g}": round(v, 6) for k, v in scores.items()},
                               "train_accuracy": round(fitted_accuracy, 6)}]
    assert (refit["samples"], refit["from"], refit["tta_flip"]) == (320, paths[0], False)
    assert "ensemble_cv_accuracy" not in refit     # one head: the mean of its logits is its own
    assert "command" not in refit                   # main() was not called as the grefel program
    assert info["temperature"] == 1.0 and "logit_adjustment" not in info and "metrics" not in info
    assert info["training"]["data"]["train_class_counts"] == [9, 8, 7, 6, 5, 1, 2, 1]
    assert refit["class_counts"] == np.bincount(ds.labels, minlength=8).tolist()   # the prior a logit adjustment removes

    # With --c-by head an ensemble's members are re-fitted each on its own slice of the embedding, with its own
    # best C: as if refitted alone.
    ensemble, _ = build_from_checkpoint(tmp_path / "rens.safetensors")
    torch.testing.assert_close(ensemble.members[0].fc.weight, refitted.fc.weight)
    assert main(["model", "refit", paths[1], "--output", str(tmp_path / "r1"), *flags]) == 0
    alone = build_from_checkpoint(tmp_path / "r1.safetensors")[0]
    torch.testing.assert_close(ensemble.members[1].fc.weight, alone.fc.weight)

    # By default one C for both members: the best for the mean of their logits, recorded with its scores.
    assert main(["model", "refit", str(tmp_path / "ens.safetensors"), "--output", str(tmp_path / "shared"),
                 *flags]) == 0
    model, _ = build_from_checkpoint(tmp_path / "ens.safetensors")
    e = frozen_embeddings(model, ds, tta_flip=False)
    zs = [(part - part.mean(0)) / part.std(0) for part in e.split(e.shape[1] // 2, dim=1)]
    combined = cross_validate_c(zs, y, 8, [0.01, 1.0], folds=3).combined
    shared, info = build_from_checkpoint(tmp_path / "shared.safetensors")
    refit = info["training"]["refit"]
    assert refit["c_by"] == "ensemble" and [h["C"] for h in refit["heads"]] == [best_c(combined)] * 2
    assert refit["ensemble_cv_accuracy"] == {f"{k:g}": round(v, 6) for k, v in combined.items()}
    for member, part, z_part in zip(shared.members, e.split(e.shape[1] // 2, dim=1), zs):
        w, _ = fit_logistic_regression(z_part, y, 8, best_c(combined))
        torch.testing.assert_close(member.fc.weight, (w / part.std(0)).float())


def test_refit_refuses_a_model_without_a_linear_head_in_one_line(tmp_path, refit_csv_root, cache_dir, capsys):
    from grefel.commands import main
    from grefel.config import to_dict
    from grefel.labels import CANONICAL_CLASSES
    from grefel.models.model_file import save_model_checkpoint

    model = tiny("grefel_small")
    save_model_checkpoint(tmp_path / "g", model, {
        "preset": "grefel_small", "model": to_dict(model.config), "class_names": list(CANONICAL_CLASSES),
        "input": {"size": model.config.input_size, "channels": 3}, "preprocessing": {"color": "grey", "crop_size": 48},
        "serve": "primary", "temperature": 1.0})
    code = main(["model", "refit", str(tmp_path / "g.safetensors"), "--output", str(tmp_path / "out"),
                 "--format", "csv", "--data-root", str(refit_csv_root)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "grefel_small: its classifier is not a linear layer" in err
    assert not (tmp_path / "out.safetensors").exists()
    # A search it cannot run is refused before the model is read or a face embedded.
    code = main(["model", "refit", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "out"),
                 "--format", "csv", "--data-root", str(refit_csv_root), "--folds", "1"])
    assert code == 2 and capsys.readouterr().err == "grefel model: error: folds = 1: expected at least 2\n"
