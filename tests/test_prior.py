"""GeoDA and CGBA guided by surrogate priors (``prior_geoda``, ``prior_cgba``): linear models whose exact minimum is
known, with surrogates that are right, half right or useless, and a small CNN for the budget and verification rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact
from test_attacks import NOISE_START, CountingModel, linear_problem

from attacks import (
    CGBA,
    SURROGATE_ATTACKS,
    ArtifactModel,
    BudgetedModel,
    GeoDA,
    PriorCGBA,
    PriorGeoDA,
    TransferAttack,
    build_attack,
    create_attack,
)
from attacks.access.lattice import l2
from attacks.methods.suite import PRIOR_GEODA, SuiteEntry
from avc_common.artifact import save_artifact
from avc_common.images import to_unit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_linear(weights: torch.Tensor, folder) -> str:
    linear = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    linear.weight.data = weights.clone()
    return str(save_artifact(torch.nn.Sequential(torch.nn.Flatten(), linear), folder, input_shape=(8, 8, 1),
                             class_names=["a", "b", "c"], arch="linear", dataset="test", training={}, metrics={}))


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """The 8 x 8 linear problem and three surrogates: its own model (a perfect prior), its weights plus noise (each
    class pair's normal at a cosine of about 0.6 to the target's) and another random linear model (useless)."""
    problem = linear_problem()
    weights = problem.model.net[1].weight.detach()
    folder = tmp_path_factory.mktemp("linear")
    noise = torch.randn(weights.shape, generator=torch.Generator().manual_seed(0)) * 1.33 / 8
    return problem, {"perfect": save_linear(weights, folder / "perfect"),
                     "half": save_linear(weights + noise, folder / "half"),
                     "useless": save_linear(linear_problem(seed=5).model.net[1].weight.detach(), folder / "useless")}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The fixture CNN as the target, six random images labelled by it, and another seed of it as the surrogate."""
    folder = tmp_path_factory.mktemp("cnn")
    model = ArtifactModel(make_artifact(folder / "target"))
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    surrogate = str(make_artifact(folder / "surrogate", training={"loss": "natural"}, seed=1))
    return model, images, model(images), surrogate


def ratios(attack, problem, budget: int, seed: int = 1) -> np.ndarray:
    model = BudgetedModel(problem.model, problem.images, problem.labels, budget=budget)
    attack.run(model, np.arange(len(problem.images)), np.random.default_rng(seed))
    assert model.used.max() <= budget
    ratio = model.best_l2 / problem.exact
    assert np.all(ratio >= 1 - 1e-9), "closer than the exact minimum: the adversarial is not real"
    return ratio


PLAIN = {PriorGeoDA: GeoDA, PriorCGBA: CGBA}  # each attack with priors, and the same attack without them
WITH_PRIORS = pytest.mark.parametrize("kind", list(PLAIN), ids=["prior_geoda", "prior_cgba"])


def with_prior(*surrogates: str, kind: type = PriorGeoDA, **kwargs) -> PriorGeoDA | PriorCGBA:
    """Probes in the full space: a random linear model has no low-frequency prior."""
    return kind(surrogates=surrogates, freq=1.0, init=NOISE_START, **kwargs)


@WITH_PRIORS
def test_a_perfect_prior_reaches_the_exact_minimum_of_a_linear_model_in_a_hundred_queries(linear, kind):
    problem, surrogates = linear
    assert np.median(ratios(with_prior(surrogates["perfect"], kind=kind), problem, 100)) <= 1.03
    plain = PLAIN[kind](freq=1.0, init=NOISE_START)
    assert np.median(ratios(plain, problem, 100)) >= 1.5, "the probes alone are far"


def test_a_half_right_prior_and_the_probes_together_beat_the_prior_alone_and_improve_with_budget(linear):
    """The prior's own line (the transfer attack's lines alone) stops at about 1/cos of the minimum; the probes
    correct the prior's error, more with more queries."""
    problem, surrogates = linear
    line = np.median(ratios(TransferAttack(surrogates=(surrogates["half"],), refine=None), problem, 100))
    short, full = (np.median(ratios(with_prior(surrogates["half"]), problem, b)) for b in (100, 1000))
    assert line > 1.3
    assert full < short and full <= 1.1


@WITH_PRIORS
def test_a_useless_prior_gets_no_weight_and_costs_almost_nothing(linear, kind):
    problem, surrogates = linear
    for budget in (300, 1000):
        plain = np.median(ratios(PLAIN[kind](freq=1.0, init=NOISE_START), problem, budget))
        useless = np.median(ratios(with_prior(surrogates["useless"], kind=kind), problem, budget))
        perfect = np.median(ratios(with_prior(surrogates["perfect"], kind=kind), problem, budget))
        assert useless <= 1.02 * plain
        assert perfect < useless - 0.04


def test_one_prior_per_surrogate_finds_the_good_surrogate_among_useless_ones(linear):
    """Averaged into one ensemble, a useless surrogate spoils the perfect one's prior; as priors of their own, the
    probes' agreement gives the perfect one the weight."""
    problem, surrogates = linear
    pair = (surrogates["useless"], surrogates["perfect"])
    each = np.median(ratios(with_prior(*pair, priors="each"), problem, 300))
    ensemble = np.median(ratios(with_prior(*pair, priors="ensemble"), problem, 300))
    assert each <= 1.03 and ensemble > each + 0.1


@WITH_PRIORS
def test_prior_attacks_stay_within_budget_and_report_verified_adversarials(cnn, kind):
    net, images, labels, surrogate = cnn
    attack, budget = kind(surrogates=(surrogate,)), 200
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=budget)
    attack.run(model, np.arange(len(images)), np.random.default_rng(0))
    assert counter.queries == model.used.sum() and model.used.max() <= budget
    assert model.used.min() > budget - attack.reserve - 20, "the budget is spent, not left over"
    assert np.all(np.isfinite(model.best_l2)), "every image fooled"
    assert np.all(net(model.best) != labels), "every reported adversarial is misclassified as sent"
    np.testing.assert_allclose(model.best_l2, l2(to_unit(model.best), to_unit(images)))
    for i in range(2):  # one image alone: the independent count is that image's count
        alone = CountingModel(net)
        attack.run(BudgetedModel(alone, images[i:i + 1], labels[i:i + 1], budget=budget), np.array([0]),
                   np.random.default_rng(0))
        assert alone.queries <= budget


@WITH_PRIORS
def test_prior_attacks_are_deterministic_for_a_seed_and_skip_misclassified_images(cnn, kind):
    net, images, labels, surrogate = cnn
    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % 10
    runs = []
    for _ in range(2):
        model = BudgetedModel(net, images, wrong, budget=150)
        kind(surrogates=(surrogate,)).run(model, np.arange(len(images)), np.random.default_rng(3))
        runs.append(model)
    np.testing.assert_array_equal(runs[0].best, runs[1].best)
    np.testing.assert_array_equal(runs[0].used, runs[1].used)
    assert runs[0].used[0] == 1 and runs[0].best_l2[0] == 0


def test_prior_geoda_is_built_with_the_suites_surrogates_and_refuses_bad_settings(cnn, linear):
    _, _, _, surrogate = cnn
    assert "prior_geoda" in SURROGATE_ATTACKS and PRIOR_GEODA.needs_surrogates and PRIOR_GEODA.source
    attack = build_attack(PRIOR_GEODA, [surrogate], device="cpu")
    assert isinstance(attack, PriorGeoDA) and attack.surrogates == (surrogate,)
    refined = build_attack(SuiteEntry("transfer", {"refine": SuiteEntry("prior_geoda", {"prior": 500.0})}), [surrogate])
    assert refined.refine.surrogates == (surrogate,)
    on_cuda = PriorGeoDA(surrogates=(surrogate,), device="cuda:1")  # built, not run: no CUDA needed
    assert on_cuda == attack and repr(on_cuda) == repr(attack) and "device" not in repr(attack)
    assert "max_cos=0.5" in repr(create_attack("prior_geoda", surrogates=(surrogate,), max_cos=0.5))
    with pytest.raises(ValueError, match="at least one surrogate"):
        PriorGeoDA()
    for kwargs, match in (({"priors": "all"}, "priors must be one of"), ({"combine": "max"}, "combine must be one of"),
                          ({"max_cos": 1.0}, r"max_cos must be in")):
        with pytest.raises(ValueError, match=match):
            PriorGeoDA(surrogates=(surrogate,), **kwargs)
    net, images, labels, _ = cnn
    model = BudgetedModel(net, images, labels, budget=50)
    with pytest.raises(ValueError, match=r"takes \(8, 8, 1\) images with 3 classes"):
        PriorGeoDA(surrogates=(linear[1]["perfect"],)).run(model, np.arange(len(images)), np.random.default_rng(0))
    assert model.used.max() <= 1, "refused before any query but the clean check"


def test_prior_cgba_checks_both_cgbas_settings_and_the_priors(cnn):
    """The mixed-in priors and CGBA each check their own hyperparameters, and so does every attack's budget cap."""
    _, _, _, surrogate = cnn
    assert "prior_cgba" in SURROGATE_ATTACKS
    attack = build_attack(SuiteEntry("prior_cgba", {"variant": "cgba_h"}), [surrogate])
    assert isinstance(attack, PriorCGBA) and attack.surrogates == (surrogate,) and attack.variant == "cgba_h"
    for kwargs, match in (({}, "at least one surrogate"), ({"surrogates": (surrogate,), "variant": "arc"}, "variant"),
                          ({"surrogates": (surrogate,), "max_cos": 0}, "max_cos must be in"),
                          ({"surrogates": (surrogate,), "caution": -1.0}, "caution must be at least 0"),
                          ({"surrogates": (surrogate,), "max_queries": 0}, "max_queries must be at least 1")):
        with pytest.raises(ValueError, match=match):
            PriorCGBA(**kwargs)


class FixedGradient:
    """A stand-in surrogate ensemble whose margin gradient is the same unit direction everywhere."""

    def __init__(self, direction: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.direction = torch.from_numpy(direction.reshape(1, *shape)).permute(0, 3, 1, 2)

    def gradient(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.direction.expand(len(x), -1, -1, -1).clone()


@pytest.mark.parametrize("caution", [0.0, 1.0])
def test_caution_trusts_a_prior_only_as_far_as_the_probes_have_shown_it(caution):
    """Probes that agree with the prior at a measured cosine of 0.15 give it weight as they are; with ``caution`` 1
    the standard error after 50 probes (0.18) is taken off first, so the same evidence gives none, and after 5000
    probes (error 0.018) it gives the prior weight again."""
    from attacks.methods.surrogate_prior import SurrogatePrior

    shape, dim = (4, 4, 1), 16
    direction = np.zeros(dim, dtype=np.float32)
    direction[0] = 1.0
    weight = float(np.sqrt(2 / (np.pi * dim)))
    prior = SurrogatePrior([FixedGradient(direction, shape)], np.zeros(1, dtype=np.int64), shape, weight, 0.95,
                           torch.device("cpu"), caution)
    ids, points = np.array([0]), np.full((1, dim), 0.5, dtype=np.float32)
    added = [prior(ids, points, 0.15 * weight * n * direction[None], np.array([n]))[0] @ direction for n in (50, 4950)]
    if caution:
        assert added[0] == 0 and added[1] > 0
    else:
        assert added[0] > 0 and added[1] > 0
