"""CGBA, both semicircle searches: the exact minimum of a linear model approached, budgets kept to the query,
every adversarial re-verified, one seed one result. (The checks every registered attack gets, ``cgba`` at its
defaults: tests/test_attacks.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from test_attacks import NOISE_START, CountingModel, attack_ratios, linear_problem, true_normals

from attacks import ATTACKS, BudgetedModel, create_attack
from attacks.access.lattice import l2, quantize
from attacks.blocks.linesearch import bisect
from attacks.methods.cgba import CGBA, Semicircle
from avc_common.images import to_unit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARIANTS = ["cgba", "cgba_h"]


def test_cgba_is_registered_with_its_hyperparameters_shown():
    assert ATTACKS["cgba"] is CGBA
    assert "variant='cgba'" in repr(create_attack("cgba", variant="cgba"))
    with pytest.raises(ValueError, match="variant='cgbah' is not one of"):
        CGBA(variant="cgbah")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("smooth", [False, True], ids=["full-space", "smooth"])
def test_linear_model_distance_approaches_the_exact_minimum(variant, smooth):
    problem = linear_problem(side=16 if smooth else 8, smooth=smooth)
    attack = CGBA(variant=variant, freq=0.5 if smooth else 1.0, init=NOISE_START)  # a random model: no frequency prior
    short, full = attack_ratios(attack, problem, 200), attack_ratios(attack, problem, 1000)
    assert np.all(full >= 1 - 1e-9), "closer than the exact minimum: the adversarial is not real"
    assert np.median(full) <= 1.10
    assert np.median(full) < np.median(short), "more queries should give smaller distances"


def test_the_semicircle_holds_the_closest_point_of_a_flat_boundary():
    """Thales: at the angle between b - x and the true normal, the semicircle meets the foot of the perpendicular."""
    rng = np.random.default_rng(0)
    clean, normal = rng.uniform(0.3, 0.7, (5, 64)), rng.standard_normal((5, 64))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    along_plane = rng.standard_normal((5, 64))
    along_plane -= np.sum(along_plane * normal, axis=1, keepdims=True) * normal
    foot = clean + 0.4 * normal
    boundary = foot + 0.3 * along_plane / np.linalg.norm(along_plane, axis=1, keepdims=True)
    arc = Semicircle(clean, boundary, normal + 0.5 * rng.standard_normal((5, 64)) / 8)  # a noisy estimate
    exact = Semicircle(clean, boundary, normal)
    rows = np.arange(5)
    np.testing.assert_allclose(exact.point(rows, exact.theta), foot, atol=1e-6)
    for phi in (0.1, 0.5, 1.0, 1.5):
        dist = np.linalg.norm(arc.point(rows, np.full(5, phi)) - clean, axis=1)
        np.testing.assert_allclose(dist, arc.radius * np.cos(phi), rtol=1e-5)  # never farther than b
    np.testing.assert_allclose(arc.chord(0, np.full(5, 0.5)),
                               np.linalg.norm(arc.point(rows, np.full(5, 0.5)) - boundary, axis=1), rtol=1e-5)


def test_with_the_true_normal_one_semicircle_search_lands_on_the_closest_boundary_point():
    problem = linear_problem()
    ids = np.arange(len(problem.images))
    model = BudgetedModel(problem.model, problem.images, problem.labels, budget=200)
    clean = model.clean(ids)
    start = quantize(clean + 3 * problem.exact[:, None] * (0.6 * true_normals(problem) + 0.8 * _across(problem)))
    assert model.is_adversarial(start, ids).all()
    boundary, _ = bisect(model, ids, clean, start)
    before = l2(boundary, clean) / problem.exact
    found = CGBA(variant="cgba")._bisect_arc(model, ids, Semicircle(clean, boundary, true_normals(problem)))
    assert np.median(before) > 1.5
    assert model.is_adversarial(found, ids).all()
    assert np.median(l2(found, clean) / problem.exact) <= 1.05


def _across(problem) -> np.ndarray:
    """Unit rows orthogonal to each image's true normal."""
    normal = true_normals(problem)
    other = np.random.default_rng(1).standard_normal(normal.shape)
    other -= np.sum(other * normal, axis=1, keepdims=True) * normal
    return other / np.linalg.norm(other, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("budget", [23, 61, 300])
def test_budget_is_kept_to_the_query_and_every_adversarial_reverifies(variant, budget, tiny_cnn):
    """Small budgets run out inside a normal estimate or a search; those rows drop out instead of overspending."""
    net, images, labels = tiny_cnn
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=budget)
    CGBA(variant=variant).run(model, np.arange(len(images)), np.random.default_rng(0))
    assert counter.queries == model.used.sum() and model.used.max() <= budget
    found = np.flatnonzero(np.isfinite(model.best_l2))
    assert len(found) == len(images)
    assert np.all(net(model.best[found]) != labels[found]), "every reported adversarial is misclassified as sent"
    np.testing.assert_allclose(model.best_l2[found], l2(to_unit(model.best[found]), to_unit(images[found])))
    if budget == 300:
        assert model.used.min() >= budget - 12, "the budget should be spent, apart from the search reserve"


@pytest.mark.parametrize("variant", VARIANTS)
def test_distance_shrinks_with_the_budget(variant, tiny_cnn):
    net, images, labels = tiny_cnn
    medians = []
    for budget in (100, 300, 1000):
        model = BudgetedModel(net, images, labels, budget=budget)
        CGBA(variant=variant).run(model, np.arange(len(images)), np.random.default_rng(0))
        medians.append(np.median(model.best_l2))
    assert medians[0] > medians[1] > medians[2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_seed_gives_one_result(variant, tiny_cnn):
    net, images, labels = tiny_cnn
    runs = []
    for seed in (0, 0, 1):
        model = BudgetedModel(net, images, labels, budget=200)
        CGBA(variant=variant).run(model, np.arange(len(images)), np.random.default_rng(seed))
        runs.append(model)
    np.testing.assert_array_equal(runs[0].best, runs[1].best)
    np.testing.assert_array_equal(runs[0].used, runs[1].used)
    assert not np.array_equal(runs[0].best, runs[2].best)
