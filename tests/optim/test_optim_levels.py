"""layer_level: literal numbers of the ramp k_i = k_min + (k_max - k_min) (1 - i/N)^gamma."""
from __future__ import annotations

import pytest

from dualopt_mm.optim import layer_level
from dualopt_mm.optim.levels import reference_level


def test_linear_ramp() -> None:
    assert [layer_level(i, 5, k_max=0.01) for i in range(5)] == pytest.approx(
        [0.01, 0.0075, 0.005, 0.0025, 0.0])


def test_gamma_kmin_reverse() -> None:
    assert layer_level(1, 5, k_max=0.01, gamma=2.0) == pytest.approx(0.005625)
    assert layer_level(2, 3, k_max=0.04, k_min=0.01, gamma=0.5) == pytest.approx(0.01)
    assert layer_level(1, 3, k_max=0.04, k_min=0.01, gamma=0.5) == pytest.approx(
        0.01 + 0.03 * 0.5**0.5)
    assert [layer_level(i, 3, k_max=0.02, reverse=True) for i in range(3)] == pytest.approx(
        [0.0, 0.01, 0.02])


def test_single_layer_gets_k_max_both_ways() -> None:
    assert layer_level(0, 1, k_max=0.3, k_min=0.1) == 0.3
    assert layer_level(0, 1, k_max=0.3, k_min=0.1, reverse=True) == 0.3


@pytest.mark.parametrize('args,match', [
    ((0, 3, 0.01, 0.0, 0.0), r'gamma=0.0 must be > 0'),
    ((0, 3, 0.01, 0.02, 1.0), r'k_min=0.02 > k_max=0.01'),
    ((0, 3, 0.01, -0.01, 1.0), r'k_min=-0.01 is negative'),
    ((3, 3, 0.01, 0.0, 1.0), r'layer_id=3 must be in \[0, num_layers - 1\] = \[0, 2\]'),
    ((0, 0, 0.01, 0.0, 1.0), r'num_layers=0 must be >= 1'),
    ((0.5, 3, 0.01, 0.0, 1.0), r'layer_id must be an int, got 0.5'),
])
def test_invalid(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer_level(*args)


def test_reference_level_has_eps_inside() -> None:
    assert reference_level(0, 3, 1.0, 0.0, 1.0, eps=1e-3) == pytest.approx(0.999)
    assert reference_level(2, 3, 1.0, 0.0, 1.0, eps=1e-3) == pytest.approx(-1e-3)
    assert reference_level(2, 3, 1.0, 0.0, 2.0, eps=1e-3) == pytest.approx(1e-6)
