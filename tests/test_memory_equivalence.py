"""Training-memory changes keep the maths: the strided-slice IR shortcut against POSTER++'s
`MaxPool2d(1, stride)`, and activation checkpointing against the plain forward (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grefel.engine.losses import GReFELLoss
from grefel.errors import ConfigError
from grefel.models import create_model
from grefel.models.ir import Subsample

# IR units of each kind (stride-2 identity shortcut in body1.0, stride-1 identities after it), two fusion
# blocks, nonzero drop path and dropout so the replayed RNG matters.
SIZES = dict(input_size=48, branch_size=32, landmark_size=64, ir_stem=8, ir_widths=(8, 16, 32), ir_units=(2, 2, 2),
             cross_heads=(1, 2, 2), embed_dim=32, num_heads=2, depth=2, num_anchors=3, drop_path=0.2,
             cross_drop_path=(0.1, 0.2, 0.3))
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def build(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return create_model("grefel_paper", **SIZES, **overrides)


def with_maxpool_shortcuts(model: nn.Module) -> nn.Module:
    """The previous implementation: every identity shortcut a `MaxPool2d(1, stride)`."""
    subsamples = [(name, m) for name, m in model.named_modules() if isinstance(m, Subsample)]
    assert any(m.stride == 2 for _, m in subsamples) and any(m.stride == 1 for _, m in subsamples)
    for name, m in subsamples:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, nn.MaxPool2d(1, m.stride))
    return model


def train_steps(model: nn.Module, steps: int = 2) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Forward + backward at fixed inputs and RNG; the outputs and gradients of each step (SGD in between)."""
    model.train()
    criterion = GReFELLoss()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    target = torch.eye(8)[torch.tensor([0, 3, 5, 7])]
    outputs, grads = [], []
    for step in range(steps):
        torch.manual_seed(10 + step)
        out = model(x, trust=0.5)
        loss, _ = criterion(out, target, model.reliability.anchors, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        outputs.append(torch.cat([out.logits, out.corrected], 1).detach().clone())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    return outputs, grads


def assert_same_training(a: nn.Module, b: nn.Module) -> None:
    out_a, grads_a = train_steps(a)
    out_b, grads_b = train_steps(b)
    for oa, ob in zip(out_a, out_b):
        torch.testing.assert_close(ob, oa, **TOLERANCE)
    for ga, gb in zip(grads_a, grads_b):
        assert ga.keys() == gb.keys() and len(ga) > 50
        for name in ga:
            torch.testing.assert_close(gb[name], ga[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
    # Batch-norm running statistics and counters, updated once per forward as without checkpointing.
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name in buffers_a:
        torch.testing.assert_close(buffers_b[name], buffers_a[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
    a.eval(), b.eval()
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(b(x).corrected, a(x).corrected, **TOLERANCE)


def test_strided_slice_shortcut_matches_maxpool_shortcut():
    assert_same_training(with_maxpool_shortcuts(build()), build())


@pytest.mark.parametrize("flags", [dict(checkpoint_ir_stage1=True), dict(checkpoint_fusion=True),
                                   dict(checkpoint_ir_stage1=True, checkpoint_fusion=True)])
def test_activation_checkpointing_matches_the_plain_forward(flags):
    plain = build()
    checkpointed = build(**flags)
    checkpointed.load_state_dict(plain.state_dict())
    assert_same_training(plain, checkpointed)


def test_activation_checkpointing_keeps_fewer_tensors_for_backward():
    def saved_bytes(model: nn.Module) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.rand(4, 3, 48, 48)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, trust=0.5).corrected.sum().backward()
        return total

    plain = saved_bytes(build().train())
    stage1 = saved_bytes(build(checkpoint_ir_stage1=True).train())
    both = saved_bytes(build(checkpoint_ir_stage1=True, checkpoint_fusion=True).train())
    assert both < stage1 < plain


def test_ir_stage1_checkpointing_needs_the_ir_branch():
    with pytest.raises(ConfigError, match="checkpoint_ir_stage1 applies to the IR image branch"):
        create_model("grefel_vgg", checkpoint_ir_stage1=True)
