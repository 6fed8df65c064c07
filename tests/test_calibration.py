"""Temperature scaling: recovers a known temperature and improves over-confident predictions."""

from __future__ import annotations

import pytest
import torch

from grefel.calibration import T_MAX, T_MIN, apply_temperature, fit_temperature
from grefel.errors import DataError
from grefel.metrics import expected_calibration_error, nll


def _sampled(temperature: float, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z / temperature): the true temperature is known."""
    gen = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, 8, generator=gen)  # (N, C)
    labels = torch.multinomial(torch.softmax(z / temperature, dim=1), 1, generator=gen).squeeze(1)  # (N,)
    return z, labels


@pytest.mark.parametrize("t0", [0.5, 2.0])
def test_recovers_known_temperature(t0: float) -> None:
    assert fit_temperature(*_sampled(t0)) == pytest.approx(t0, rel=0.03)


def test_soft_targets_recover_temperature_exactly() -> None:
    # Soft NLL against softmax(z / T0) is minimised exactly at T0 (the KL term vanishes there).
    z = 3.0 * torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert fit_temperature(z, torch.softmax(z / 1.7, dim=1)) == pytest.approx(1.7, rel=1e-5)


def test_reduces_nll_and_ece_of_overconfident_logits() -> None:
    z, labels = _sampled(1.0, n=5000, seed=2)
    overconfident = 3.0 * z
    t = fit_temperature(overconfident, labels)
    before, after = torch.softmax(overconfident, dim=1), apply_temperature(overconfident, t)
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll(after, labels) < 0.8 * nll(before, labels)
    assert expected_calibration_error(after, labels) < 0.5 * expected_calibration_error(before, labels)
    assert torch.equal(after.argmax(dim=1), before.argmax(dim=1))


def test_separable_logits_stop_at_the_lower_bound() -> None:
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    assert fit_temperature(z, z.argmax(dim=1)) == pytest.approx(T_MIN)


def test_confidently_wrong_logits_stop_exactly_at_the_upper_bound() -> None:
    # An untrained or broken model: the fit runs to T_MAX, which checkpoints must still accept.
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    assert fit_temperature(z, z.argmin(dim=1)) == T_MAX


def test_apply_temperature() -> None:
    z = torch.tensor([[2.0, 0.0, -2.0]])
    torch.testing.assert_close(apply_temperature(z, 2.0), torch.softmax(torch.tensor([[1.0, 0.0, -1.0]]), dim=1))
    with pytest.raises(DataError, match="temperature must be"):
        apply_temperature(z, 0.0)


def test_bad_inputs_raise_one_line_errors() -> None:
    z = torch.zeros(4, 3)
    with pytest.raises(DataError, match="class index 3 at position 1 is outside 0..2"):
        fit_temperature(z, torch.tensor([0, 3, 1, 2]))
    with pytest.raises(DataError, match="expected 4 rows"):
        fit_temperature(z, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="soft target row 0"):
        fit_temperature(z, torch.ones(4, 3))
    with pytest.raises(DataError, match="row 2 contains NaN"):
        fit_temperature(torch.tensor([[0.0, 1.0]] * 2 + [[float("nan"), 0.0]]), torch.tensor([0, 1, 0]))
