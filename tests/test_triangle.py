"""The Triangle Attack's corners: the triangle the paper describes, closer to the clean image than the adversarial
it starts from. The attack itself runs in tests/test_attacks.py's tests of every label-only attack."""
from __future__ import annotations

import numpy as np
import pytest

from attacks import TriangleAttack, create_attack
from attacks.methods.triangle import Triangles, first_angle


def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.arccos(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("alpha", [np.pi / 2 - 0.1, np.pi / 2, np.pi / 2 + 0.1])
def test_corners_have_the_angles_asked_for_and_come_closer(alpha):
    rng = np.random.default_rng(0)
    clean, adv = rng.uniform(0, 1, (8, 30)), rng.uniform(0, 1, (8, 30))
    plane = Triangles(clean.astype(np.float32), adv.astype(np.float32), rng.standard_normal((8, 30)))
    alphas = np.full(8, alpha)
    rows = np.arange(8)
    for theta in (first_angle(alphas), (first_angle(alphas) + np.pi - alphas) / 2):
        for side in (1.0, -1.0):
            corner = plane.corner(rows, alphas, theta, np.full(8, side)).astype(np.float64)
            np.testing.assert_allclose(angle(corner - clean, adv - clean), theta, atol=1e-3)
            np.testing.assert_allclose(angle(clean - corner, adv - corner), alpha, atol=1e-3)
            assert np.all(np.linalg.norm(corner - clean, axis=1) < np.linalg.norm(adv - clean, axis=1))


def test_triangle_is_registered_and_checks_its_hyperparameters():
    assert isinstance(create_attack("triangle"), TriangleAttack)
    assert "freq=0.5" in repr(create_attack("triangle", freq=0.5))
    with pytest.raises(ValueError, match="freq"):
        TriangleAttack(freq=0)
    with pytest.raises(ValueError, match="alpha_range"):
        TriangleAttack(alpha_range=2.0)
