"""Attacks on models whose answers are known: linear classifiers (exact minimal L2 by formula), a tiny CNN,
and a model that is always wrong; plus the query ledger that enforces budgets and keeps the verified best."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from attacks import (
    ATTACKS,
    SURROGATE_ATTACKS,
    BlendedUniformNoise,
    BoundaryAttack,
    BudgetedModel,
    BudgetExceeded,
    GeoDA,
    HopSkipJump,
    TangentAttack,
    TorchModel,
    TriangleAttack,
    create_attack,
)
from attacks.access.lattice import l2, quantize
from attacks.blocks.directions import dct_matrix
from avc_common.images import ImageShape, ModelSpec, to_unit

NOISE_START = (BlendedUniformNoise(repeats=20, until_found=True),)
LABEL_ONLY = sorted(set(ATTACKS) - SURROGATE_ATTACKS)  # the others need surrogate artifacts: tests/test_transfer.py


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingModel:
    """Counts every image the wrapped model is asked about, independently of the ledger."""

    def __init__(self, model: TorchModel) -> None:
        self.model = model
        self.info = model.info
        self.queries = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.queries += len(images)
        return self.model(images)


@dataclass
class LinearProblem:
    model: TorchModel
    images: np.ndarray
    labels: np.ndarray
    exact: np.ndarray  # minimal L2 to the decision boundary, per image


def linear_problem(side: int = 8, classes: int = 3, smooth: bool = False, n: int = 16, seed: int = 0) -> LinearProblem:
    """Images near 0.5 plus their class's weight pattern; weights orthonormal and orthogonal to constant images.

    ``smooth`` weights lie in the lowest half of the DCT frequencies (the prior the
    low-frequency attacks assume). The exact distance is the smallest margin over the
    pairwise hyperplanes; the test checks the box does not bind at the minimiser.
    """
    rng = np.random.default_rng(seed)
    d = side * side
    if smooth:
        low = dct_matrix(side)[:side // 2]
        basis = np.kron(low, low)[1:].T  # d x m orthonormal, the constant (DC) pattern left out
        weights = (basis @ np.linalg.qr(rng.standard_normal((basis.shape[1], classes)))[0]).T
    else:
        q = np.linalg.qr(np.concatenate([np.ones((d, 1)), rng.standard_normal((d, classes))], axis=1))[0]
        weights = q[:, 1:].T
    weights = weights.astype(np.float32)
    y = rng.integers(0, classes, n)
    x = 0.5 + 0.8 * weights[y] + rng.uniform(-0.05, 0.05, (n, d))
    images = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).reshape(n, side, side, 1)
    xf = to_unit(images).reshape(n, d).astype(np.float64)
    logits = xf @ weights.T
    labels = logits.argmax(axis=1)
    rows = np.arange(n)
    normals = weights[labels][:, None, :] - weights[None]  # n x classes x d
    margin = logits[rows, labels][:, None] - logits
    dist = margin / np.maximum(np.linalg.norm(normals, axis=2), 1e-12)
    dist[rows, labels] = np.inf
    nearest = dist.argmin(axis=1)
    exact = dist[rows, nearest]
    minimiser = xf - exact[:, None] * normals[rows, nearest] / np.linalg.norm(normals[rows, nearest], axis=1)[:, None]
    assert minimiser.min() > 0.05 and minimiser.max() < 0.95, "the [0, 1] box would bind"
    linear = nn.Linear(d, classes, bias=False)
    linear.weight.data = torch.from_numpy(weights)
    return LinearProblem(TorchModel(nn.Sequential(nn.Flatten(), linear), ModelSpec(ImageShape(side, side, 1), classes)),
                         images, labels, exact)


def attack_ratios(attack, problem: LinearProblem, budget: int) -> np.ndarray:
    model = BudgetedModel(problem.model, problem.images, problem.labels, budget=budget)
    attack.run(model, np.arange(len(problem.images)), np.random.default_rng(1))
    assert model.used.max() <= budget
    return model.best_l2 / problem.exact


def true_normals(problem) -> np.ndarray:
    """Per image, the unit normal of the nearest pairwise hyperplane, pointing away from the image's class."""
    weights = problem.model.net[1].weight.detach().numpy().astype(np.float64)
    clean = to_unit(problem.images).reshape(len(problem.images), -1).astype(np.float64)
    logits = clean @ weights.T
    rows = np.arange(len(clean))
    normals = weights[problem.labels][:, None, :] - weights[None]
    dist = (logits[rows, problem.labels][:, None] - logits) / np.maximum(np.linalg.norm(normals, axis=2), 1e-12)
    dist[rows, problem.labels] = np.inf
    normal = -normals[rows, dist.argmin(axis=1)]
    return normal / np.linalg.norm(normal, axis=1, keepdims=True)

@pytest.mark.parametrize("attack, smooth, tolerance", [
    (HopSkipJump(init=NOISE_START), False, 1.10),
    (TangentAttack(init=NOISE_START), False, 1.10),
    (TriangleAttack(freq=1.0, init=NOISE_START), False, 1.30),  # made for small budgets; slower to converge
    (GeoDA(freq=1.0, init=NOISE_START), False, 1.10),  # a random linear model has no low-frequency prior
    (GeoDA(init=NOISE_START), True, 1.10),
    (BoundaryAttack(freq=1.0, init=NOISE_START), False, 1.50),
    (BoundaryAttack(init=NOISE_START), True, 1.50),
], ids=["hsja", "tangent", "triangle", "geoda-full-space", "geoda-smooth", "boundary-full-space", "boundary-smooth"])


def test_linear_model_distance_approaches_the_exact_minimum(attack, smooth, tolerance):
    problem = linear_problem(side=16 if smooth else 8, smooth=smooth)
    short, full = attack_ratios(attack, problem, 200), attack_ratios(attack, problem, 1000)
    assert np.all(full >= 1 - 1e-9), "closer than the exact minimum: the adversarial is not real"
    assert np.median(full) <= tolerance
    assert np.median(full) < np.median(short), "more queries should give smaller distances"


@pytest.mark.parametrize("name", LABEL_ONLY)
def test_every_attack_stays_within_budget_and_reports_verified_adversarials(name, tiny_cnn):
    net, images, labels = tiny_cnn
    attack, budget = create_attack(name), 300
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=budget)
    attack.run(model, np.arange(len(images)), np.random.default_rng(0))
    assert counter.queries == model.used.sum() and model.used.max() <= budget
    found = np.flatnonzero(np.isfinite(model.best_l2))
    assert np.all(net(model.best[found]) != labels[found]), "every reported adversarial is misclassified as sent"
    np.testing.assert_allclose(model.best_l2[found], l2(to_unit(model.best[found]), to_unit(images[found])))
    if name in ("boundary", "hsja", "tangent", "triangle", "geoda"):
        assert len(found) == len(images)
    for i in range(2):  # one image alone: the independent count is that image's count
        alone = CountingModel(net)
        attack.run(BudgetedModel(alone, images[i:i + 1], labels[i:i + 1], budget=budget), np.array([0]),
                   np.random.default_rng(0))
        assert alone.queries <= budget


@pytest.mark.parametrize("name", LABEL_ONLY)
def test_misclassified_images_have_distance_zero_after_one_query(name, tiny_cnn):
    net, images, labels = tiny_cnn
    model = BudgetedModel(net, images, (labels + 1) % 4, budget=300)
    create_attack(name).run(model, np.arange(len(images)), np.random.default_rng(0))
    assert np.all(model.used == 1) and np.all(model.best_l2 == 0)
    np.testing.assert_array_equal(model.best, images)


def test_pooled_budget_goes_to_the_images_that_need_it(tiny_cnn):
    net, images, labels = tiny_cnn
    wrong = labels.copy()
    wrong[:3] = (wrong[:3] + 1) % 4  # three images cost one query each
    model = BudgetedModel(net, images, wrong, budget=100, pooled=True)
    GeoDA().run(model, np.arange(len(images)), np.random.default_rng(0))
    assert model.used.sum() <= 100 * len(images)
    assert model.used[3:].min() > 100


def test_ledger_refuses_overspending_before_asking_the_model(tiny_cnn):
    net, images, labels = tiny_cnn
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=3)
    model.is_adversarial(images[[0, 0, 1]], np.array([0, 0, 1]))
    np.testing.assert_array_equal(model.remaining(np.array([0, 1, 2])), [1, 2, 3])
    with pytest.raises(BudgetExceeded):
        model.is_adversarial(images[[0, 0]], np.array([0, 0]))
    assert counter.queries == 3
    with model.capped(1):
        assert model.remaining(np.array([2]))[0] == 1
        with pytest.raises(BudgetExceeded):
            model.is_adversarial(images[[2, 2]], np.array([2, 2]))
    pooled = BudgetedModel(net, images, labels, budget=2, pooled=True)
    assert list(pooled.remaining(np.array([0, 1]))) == [6, 6]
    pooled.is_adversarial(images[[0] * 11], np.array([0] * 11))
    with pytest.raises(BudgetExceeded):
        pooled.is_adversarial(images[[1, 1]], np.array([1, 1]))


def test_ledger_keeps_the_closest_misclassified_image_as_sent():
    net = TorchModel(lambda x: torch.stack([0.5 - x.flatten(1).mean(1), x.flatten(1).mean(1) - 0.5], 1),
                     ModelSpec(ImageShape(2, 2, 1), 2))  # class 1 iff mean > 0.5
    clean = np.full((1, 2, 2, 1), 100, dtype=np.uint8)
    model = BudgetedModel(net, clean, np.array([0]))
    far, near, not_adv = np.full((4,), 0.9), np.full((4,), 0.56), np.full((4,), 0.45)
    adv = model.is_adversarial(np.stack([far, near, not_adv]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(adv, [True, True, False])
    sent = np.rint(0.56 * 255).astype(np.uint8)
    assert np.all(model.best == sent) and model.best_l2[0] == pytest.approx(2 * (sent - 100) / 255)
    with model.tagged("probe"):
        model.is_adversarial(far[None], np.array([0]))
    assert model.best_tag[0] == "" and model.stats["probe"].best_l2[0] > model.best_l2[0]


def test_ledger_state_resumes_a_run_without_re_spending(tiny_cnn, tmp_path):
    net, images, labels = tiny_cnn
    model = BudgetedModel(net, images, labels, budget=100)
    with model.tagged("noise"):
        BlendedUniformNoise().run(model, np.arange(len(images)), np.random.default_rng(0))
    np.savez(tmp_path / "ledger.npz", **model.state())
    resumed = BudgetedModel(net, images, labels, budget=100)
    resumed.load_state(np.load(tmp_path / "ledger.npz"))
    for key in ("used", "checked", "best", "best_l2"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(model, key))
    assert list(resumed.best_tag) == list(model.best_tag) and list(resumed.stats) == ["noise"]
    np.testing.assert_array_equal(resumed.stats["noise"].best_l2, model.stats["noise"].best_l2)
    GeoDA().run(resumed, np.arange(len(images)), np.random.default_rng(0))
    assert resumed.used.max() <= 100 and np.all(resumed.best_l2 <= model.best_l2)


def test_attacks_show_their_hyperparameters_and_unknown_names_fail():
    assert "freq=0.3" in repr(create_attack("geoda", freq=0.3))
    with pytest.raises(ValueError, match="unknown attack"):
        create_attack("nope")


def test_geoda_prior_keeps_a_good_start_direction_that_plain_geoda_walks_away_from():
    """A transfer-like start, along a direction at cosine 0.8 to the boundary's normal (1.25x the minimum), 100 queries.

    Plain GeoDA's first estimates (40 probes in 64 dimensions) point farther, so it never beats the start."""
    problem = linear_problem()
    clean = to_unit(problem.images).reshape(len(problem.images), -1)
    rows = np.arange(len(clean))
    normal = true_normals(problem).astype(np.float32)
    other = np.random.default_rng(0).standard_normal(normal.shape)
    other -= np.sum(other * normal, axis=1, keepdims=True) * normal
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    start = quantize(clean + 2 * problem.exact[:, None] / 0.8 * (0.8 * normal + 0.6 * other))
    ratios = {}
    for prior in (0.0, 500.0):
        model = BudgetedModel(problem.model, problem.images, problem.labels, budget=100)
        assert model.is_adversarial(start, rows).all()
        GeoDA(freq=1.0, prior=prior).run(model, rows, np.random.default_rng(0))
        assert model.used.max() <= 100
        ratios[prior] = model.best_l2 / problem.exact
    assert np.all(ratios[500.0] >= 1 - 1e-9), "closer than the exact minimum: the adversarial is not real"
    assert np.median(ratios[500.0]) < np.median(ratios[0.0]) - 0.02
    assert np.median(ratios[500.0]) <= 1.22
