"""The Tangent Attack's step: the closed-form tangent point is the hemisphere's best, closer than HSJA's jump of the
same size where the boundary is flat (the paper's claim). The attack itself runs in tests/test_attacks.py's tests
of every label-only attack (linear model's exact minimum, budgets, verified adversarials)."""
from __future__ import annotations

import numpy as np
import pytest

from attacks import TangentAttack, create_attack
from attacks.blocks.linesearch import tangent_points

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def flat_setup(rows: int = 64, dim: int = 20, seed: int = 0):
    """Boundary points ``b`` on random planes through them (unit normals ``u``), clean images on the other side."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((rows, dim))
    normal = rng.standard_normal((rows, dim))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    away = rng.standard_normal((rows, dim))
    away -= np.sum(away * normal, axis=1, keepdims=True) * normal
    clean = centre + away - rng.uniform(0.2, 2.0, (rows, 1)) * normal  # below the plane
    radius = rng.uniform(0.05, 0.5, rows) * np.linalg.norm(clean - centre, axis=1)
    return clean, centre, normal, radius


def hit_distance(clean, centre, normal, through):
    """How far from ``clean`` the ray through ``through`` meets the plane through ``centre`` normal to ``normal``."""
    ray = through - clean
    s = np.sum((centre - clean) * normal, axis=1) / np.sum(ray * normal, axis=1)
    return s * np.linalg.norm(ray, axis=1)


def test_the_tangent_point_touches_the_hemisphere_and_its_ray_meets_the_plane_nearest():
    clean, centre, normal, radius = flat_setup()
    point = tangent_points(clean, centre, normal, radius).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(point - centre, axis=1), radius, rtol=1e-4)
    touch = np.sum((point - clean) * (point - centre), axis=1) / (radius * np.linalg.norm(point - clean, axis=1))
    np.testing.assert_allclose(touch, 0, atol=1e-4)  # the ray from clean is tangent to the sphere there
    assert np.all(np.sum((point - centre) * normal, axis=1) > 0), "on the normal's side"
    best = hit_distance(clean, centre, normal, point)
    assert np.all(best < np.linalg.norm(clean - centre, axis=1)), "closer than the boundary point itself"
    jumped = hit_distance(clean, centre, normal, centre + radius[:, None] * normal)  # HSJA's step, same size
    assert np.all(best <= jumped + 1e-5)
    rng = np.random.default_rng(1)
    for _ in range(200):  # no other point of the hemisphere does better
        other = rng.standard_normal(clean.shape)
        other /= np.linalg.norm(other, axis=1, keepdims=True)
        other *= np.sign(np.sum(other * normal, axis=1, keepdims=True))
        assert np.all(best <= hit_distance(clean, centre, normal, centre + radius[:, None] * other) + 1e-5)


def test_a_radius_as_large_as_the_distance_gives_the_clean_image():
    clean, centre, normal, _ = flat_setup(rows=4)
    point = tangent_points(clean, centre, normal, np.linalg.norm(clean - centre, axis=1))
    np.testing.assert_allclose(point, clean, atol=1e-5)


def test_tangent_is_registered_with_hsjas_hyperparameters():
    assert isinstance(create_attack("tangent"), TangentAttack)
    assert "init_evals=30" in repr(create_attack("tangent", init_evals=30))

