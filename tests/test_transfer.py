"""Transfer attacks from surrogate artifacts, the white-box FMN reference, and the preset suites."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import make_artifact
from test_attacks import NOISE_START, CountingModel, linear_problem

from attacks import (
    PRESETS,
    SURROGATE_ATTACKS,
    ArtifactModel,
    BiasedBoundaryAttack,
    BoundaryAttack,
    BudgetedModel,
    TransferAttack,
    build_attack,
    build_suite,
    name_attacks,
)
from attacks.access.lattice import l2
from attacks.methods.prior_geoda import PriorGeoDA
from attacks.methods.suite import SuiteEntry
from attacks.scoring import cli as score_cli
from attacks.whitebox.reference import minimal_l2
from attacks.whitebox.surrogate import robust_surrogates
from avc_common.artifact import save_artifact
from avc_common.images import to_unit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def surrogate_dir(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("surrogate") / "artifact")


@pytest.fixture(scope="module")
def target(surrogate_dir):
    """The fixture CNN in-process, and six random images labelled with its own predictions."""
    model = ArtifactModel(surrogate_dir)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    return model, images, model(images)


def save_linear(net: torch.nn.Module, folder, training: dict | None = None):
    """A net of the linear problem's shape (8x8x1 images, 3 classes) as a surrogate artifact; ``training`` is its
    manifest's training record (``{"loss": "trades"}`` marks it adversarially trained)."""
    return save_artifact(net, folder, input_shape=(8, 8, 1), class_names=["a", "b", "c"], arch="linear",
                         dataset="test", training=training or {}, metrics={})


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """The linear problem with an exact answer, and its own model saved as an artifact (a perfect surrogate)."""
    problem = linear_problem()
    art = save_linear(problem.model.net, tmp_path_factory.mktemp("linear") / "artifact")
    return problem, art


@pytest.mark.parametrize("refine", ["geoda", "biased_boundary"])
def test_transfer_returns_verified_adversarials_within_budget(target, surrogate_dir, refine):
    net, images, labels = target
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=200)
    attack = build_attack(SuiteEntry("transfer", {"radii": (1.0, 4.0), "steps": 5, "refine": SuiteEntry(refine)}),
                          [surrogate_dir])
    attack.run(model, np.arange(len(images)), np.random.default_rng(0))
    assert counter.queries == model.used.sum() and model.used.max() <= 200
    assert np.all(np.isfinite(model.best_l2)), "every image fooled"
    assert np.all(net(model.best) != labels), "every reported adversarial is misclassified as sent"
    np.testing.assert_allclose(model.best_l2, l2(to_unit(model.best), to_unit(images)))
    assert model.used.min() > 100, "the refinement spends what the lines left"


def test_transfer_lines_alone_cost_a_few_queries_and_skip_misclassified_images(target, surrogate_dir):
    net, images, labels = target
    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % 10
    model = BudgetedModel(net, images, wrong, budget=200)
    TransferAttack(surrogates=(str(surrogate_dir),), radii=(1.0, 4.0), steps=5, refine=None).run(
        model, np.arange(len(images)), np.random.default_rng(0))
    assert model.used[0] == 1 and model.best_l2[0] == 0
    assert np.all(np.isfinite(model.best_l2)) and model.used.max() <= 1 + (4 + 9) * 12, "4 lines + 9 targeted"


def test_transfer_from_the_model_itself_finds_the_exact_minimum_of_a_linear_model(linear):
    problem, art = linear
    model = BudgetedModel(problem.model, problem.images, problem.labels, budget=100)
    TransferAttack(surrogates=(str(art), str(art)), combine="loss", refine=None).run(
        model, np.arange(len(problem.images)), np.random.default_rng(0))
    ratio = model.best_l2 / problem.exact
    assert np.all(ratio >= 1 - 1e-9), "closer than the exact minimum: the adversarial is not real"
    assert np.max(ratio) <= 1.02
    assert model.used.max() <= 100


def test_transfer_refuses_missing_or_mismatched_surrogates(linear, target):
    _, art = linear
    net, images, labels = target
    with pytest.raises(ValueError, match="at least one surrogate"):
        TransferAttack()
    with pytest.raises(ValueError, match="targets must be >= 0"):
        TransferAttack(surrogates=(str(art),), targets=-1)
    model = BudgetedModel(net, images, labels, budget=50)
    with pytest.raises(ValueError, match=r"takes \(8, 8, 1\) images with 3 classes"):
        TransferAttack(surrogates=(str(art),)).run(model, np.arange(len(images)), np.random.default_rng(0))


def test_biased_boundary_returns_verified_adversarials_within_budget(target, surrogate_dir):
    net, images, labels = target
    counter = CountingModel(net)
    model = BudgetedModel(counter, images, labels, budget=150)
    BiasedBoundaryAttack(surrogates=(str(surrogate_dir),)).run(model, np.arange(len(images)), np.random.default_rng(0))
    assert counter.queries == model.used.sum() and model.used.max() <= 150
    assert np.all(np.isfinite(model.best_l2)) and np.all(net(model.best) != labels)
    np.testing.assert_allclose(model.best_l2, l2(to_unit(model.best), to_unit(images)))


def test_surrogate_gradient_bias_beats_random_steps_when_the_surrogate_is_right(linear):
    problem, art = linear
    ratios = {}
    for name, attack in (("plain", BoundaryAttack(freq=1.0, init=NOISE_START)),
                         ("biased", BiasedBoundaryAttack(surrogates=(str(art),), freq=1.0, init=NOISE_START))):
        model = BudgetedModel(problem.model, problem.images, problem.labels, budget=300)
        attack.run(model, np.arange(len(problem.images)), np.random.default_rng(0))
        ratios[name] = model.best_l2 / problem.exact
    assert np.all(ratios["biased"] >= 1 - 1e-9)
    assert np.median(ratios["biased"]) < np.median(ratios["plain"])
    assert np.median(ratios["biased"]) <= 1.1


def test_fmn_reference_is_within_a_few_percent_of_the_exact_minimum(linear):
    problem, _ = linear
    distances = minimal_l2(problem.model.net, problem.images, problem.labels, steps=200)
    ratio = distances / problem.exact
    assert np.all(ratio >= 1 - 1e-9) and np.max(ratio) <= 1.03


def test_fmn_reference_refines_given_starting_points(linear):
    problem, _ = linear
    far = BudgetedModel(problem.model, problem.images, problem.labels, budget=100)
    NOISE_START[0].run(far, np.arange(len(problem.images)), np.random.default_rng(0))
    assert np.all(far.best_l2 > 1.5 * problem.exact)
    distances = minimal_l2(problem.model.net, problem.images, problem.labels, steps=100, step_sizes=(1.0,),
                           starts=far.best)
    ratio = distances / problem.exact
    assert np.all(ratio >= 1 - 1e-9) and np.max(ratio) <= 1.03


def test_fmn_reference_reaches_a_boundary_behind_black_pixels():
    """Half the weights want black (0) pixels darker: only the other half can move. FMN's raw
    gradient points out of the box there, and without dropping those components its
    linearised radius stalls short of the boundary for good."""
    w = np.tile([1.0, -1.0], 8).astype(np.float32)
    linear = torch.nn.Linear(16, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.stack([np.zeros(16, np.float32), w])))
        linear.bias.copy_(torch.tensor([0.0, -2.0]))
    net = torch.nn.Sequential(torch.nn.Flatten(), linear)
    images = np.where(w > 0, 51, 0).astype(np.uint8).reshape(1, 4, 4, 1)  # w . x = 1.6 < 2: class 0
    exact = 0.4 / np.sqrt(8)  # raise the 8 free pixels by 0.05 each
    distances = minimal_l2(net, images, np.array([0]), steps=100, step_sizes=(1.0,))
    assert exact <= distances[0] <= 1.05 * exact


def test_fmn_reference_finds_uint8_adversarials_when_the_boundary_is_a_fraction_of_a_grey_level_away():
    """16 equal weights, boundary 2.5 grey levels of summed brightness away. FMN's float optimum raises every pixel
    by 0.16 levels, which rounds back to the clean image; the line must grow 3.2x before rounding moves pixels. The
    closest uint8 adversarial raises 3 pixels by one level, and a start there is kept as it is."""
    linear = torch.nn.Linear(16, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.stack([torch.zeros(16), torch.ones(16)]))
        linear.bias.copy_(torch.tensor([0.0, -(16 * 100 + 2.5) / 255]))
    net = torch.nn.Sequential(torch.nn.Flatten(), linear)
    images = np.full((1, 4, 4, 1), 100, dtype=np.uint8)
    lattice_min = np.sqrt(3) / 255
    found = minimal_l2(net, images, np.array([0]), steps=100, step_sizes=(1.0,))
    assert lattice_min <= found[0] <= 4 / 255  # at worst every pixel one level up
    start = images.copy()
    start.reshape(-1)[:3] += 1
    assert minimal_l2(net, images, np.array([0]), steps=100, step_sizes=(1.0,), starts=start)[0] == pytest.approx(
        lattice_min)


def test_fmn_reference_gives_zero_for_misclassified_images_and_finds_the_rest(target):
    net, images, labels = target
    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % 10
    distances = minimal_l2(net.net, images, wrong, steps=50, step_sizes=(1.0,), batch_size=4)
    assert distances[0] == 0
    assert np.all(np.isfinite(distances[1:])) and np.all(distances[1:] > 0)


def test_build_suite_fills_in_surrogates_and_drops_surrogate_attacks_without_them(surrogate_dir):
    assert "top5" in PRESETS and "quick" in PRESETS
    for entries in PRESETS.values():
        assert all(isinstance(e, SuiteEntry) and e.source for e in entries)
    with_surrogates = build_suite("top5", surrogates=[surrogate_dir])
    assert len(with_surrogates) == len(PRESETS["top5"]) == 5
    assert list(name_attacks(with_surrogates)) == ["transfer+cgba", "cgba", "hsja",
                                                   "transfer+biased_boundary", "transfer"]
    needing = [a for a in with_surrogates if isinstance(a, (TransferAttack, BiasedBoundaryAttack, PriorGeoDA))]
    assert any(isinstance(a, TransferAttack) for a in needing)
    assert all(a.surrogates == (str(surrogate_dir),) for a in needing)
    with pytest.warns(UserWarning, match="left out transfer"):
        without = build_suite("top5")
    assert len(without) == 5 - len(needing)
    assert not any(isinstance(a, (TransferAttack, BiasedBoundaryAttack, PriorGeoDA)) for a in without)
    assert list(name_attacks(without)) == ["cgba", "hsja"], "without surrogates a strong attack remains"
    assert {"transfer", "biased_boundary", "prior_geoda", "prior_cgba"} == SURROGATE_ATTACKS
    with pytest.raises(ValueError, match="unknown preset"):
        build_suite("top6")


def test_a_nested_suite_entry_gets_the_surrogates_too(surrogate_dir):
    entry = SuiteEntry("transfer", {"refine": SuiteEntry("biased_boundary", {"gradient_from": "robust"})})
    attack = build_attack(entry, [surrogate_dir])
    assert isinstance(attack.refine, BiasedBoundaryAttack) and attack.refine.gradient_from == "robust"
    assert build_attack(PRESETS["top5"][3], [surrogate_dir]).refine.gradient_from == "adaptive"
    assert attack.surrogates == attack.refine.surrogates == (str(surrogate_dir),)
    assert entry.needs_surrogates and not SuiteEntry("geoda", {"freq": 0.3}).needs_surrogates
    with pytest.raises(ValueError, match="needs surrogate"):
        build_attack(entry)


def test_score_device_reaches_every_surrogate_attack_but_not_their_repr(surrogate_dir):
    from attacks.whitebox.surrogate import load_surrogate

    s = (str(surrogate_dir),)
    args = score_cli.parse_args(["--target", "t", "--surrogate", s[0], "--device", "cpu"])
    assert args.device == torch.device("cpu")
    suite = list(score_cli.build_attacks(args)[0].values())
    nested = [a.refine for a in suite if isinstance(getattr(a, "refine", None), BiasedBoundaryAttack)]
    surrogate_attacks = [a for a in [*suite, *nested] if isinstance(a, (TransferAttack, BiasedBoundaryAttack,
                                                                        PriorGeoDA))]
    assert len(surrogate_attacks) == 4, "top5: transfer+cgba, transfer+biased_boundary and its refine, transfer"
    assert all(a.device == torch.device("cpu") for a in surrogate_attacks)
    assert [repr(a) for a in build_suite("top5", s, device="cpu")] == [repr(a) for a in suite]
    assert load_surrogate(s[0], "cpu") is load_surrogate(s[0], torch.device("cpu")), "one load per device"
    for cls in (TransferAttack, BiasedBoundaryAttack):
        on_cpu, on_cuda = cls(surrogates=s), cls(surrogates=s, device="cuda:1")  # built, not run: no CUDA needed
        assert on_cuda.device == torch.device("cuda:1")
        assert repr(on_cpu) == repr(on_cuda) and on_cpu == on_cuda and "device" not in repr(on_cuda)


def test_attack_names_show_a_non_default_refinement_and_number_repeats(surrogate_dir):
    s = (str(surrogate_dir),)
    attacks = [TransferAttack(surrogates=s), TransferAttack(surrogates=s, radii=(1.0,)),
               TransferAttack(surrogates=s, refine=BiasedBoundaryAttack(surrogates=s)), BoundaryAttack()]
    assert list(name_attacks(attacks)) == ["transfer", "transfer-2", "transfer+biased_boundary", "boundary"]


def test_robust_bias_takes_its_gradient_from_the_adversarially_trained_surrogates(surrogate_dir, linear):
    natural = str(linear[1])  # its manifest names no training loss: not adversarially trained
    robust = str(surrogate_dir)  # training.loss "trades"
    assert robust_surrogates([natural, robust]) == (robust,)
    both = (natural, robust)
    assert BiasedBoundaryAttack(surrogates=both, gradient_from="robust").gradient_sources() == ((robust,),)
    assert BiasedBoundaryAttack(surrogates=both).gradient_sources() == (both,)
    assert BiasedBoundaryAttack(surrogates=both, gradient_from="adaptive").gradient_sources() == ((robust,), both)
    assert BiasedBoundaryAttack(surrogates=(robust,), gradient_from="adaptive").gradient_sources() == ((robust,),)
    attack = BiasedBoundaryAttack(surrogates=(natural,), gradient_from="robust")
    with pytest.warns(UserWarning, match="no surrogate is adversarially trained"):
        sources = attack.gradient_sources()
    assert sources == ((natural,),)
    assert BiasedBoundaryAttack(surrogates=(natural,), gradient_from="adaptive").gradient_sources() == ((natural,),)
    with pytest.raises(ValueError, match="gradient_from must be one of"):
        BiasedBoundaryAttack(surrogates=(robust,), gradient_from="natural")


def test_adaptive_bias_learns_per_image_which_surrogate_gradient_to_follow(tmp_path, linear):
    """A misleading robust surrogate (the target's weights negated) beside the right one: "robust" follows the wrong
    gradient, "adaptive" learns to take the ensemble of all and ends about as close as "all" does."""
    problem, right = linear
    flipped = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3, bias=False))
    flipped[1].weight.data = -problem.model.net[1].weight.data.clone()
    wrong = save_linear(flipped, tmp_path / "wrong", training={"loss": "trades"})
    medians = {}
    for gradient_from in ("all", "robust", "adaptive"):
        attack = BiasedBoundaryAttack(surrogates=(str(right), str(wrong)), gradient_from=gradient_from, freq=1.0,
                                      bias=0.8, init=NOISE_START)
        model = BudgetedModel(problem.model, problem.images, problem.labels, budget=300)
        attack.run(model, np.arange(len(problem.images)), np.random.default_rng(0))
        medians[gradient_from] = float(np.median(model.best_l2 / problem.exact))
    assert medians["all"] < medians["robust"], "the fixture's robust gradient must mislead"
    assert medians["adaptive"] < medians["robust"]
    assert medians["adaptive"] <= 1.05 * medians["all"], medians


def test_surrogate_gradients_flow_through_an_exported_artifact(surrogate_dir):
    from attacks.whitebox.surrogate import Ensemble, load_surrogate, pgd_l2

    net, shape, classes = load_surrogate(str(surrogate_dir))
    assert shape == (28, 28, 1) and classes == 10
    x = torch.rand(3, 1, 28, 28)
    labels = net(x).argmax(1)
    adv = pgd_l2(Ensemble([net]), x, labels, radius=0.5, steps=5)
    assert torch.all((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-4)
    assert torch.all(adv >= 0) and torch.all(adv <= 1)
    before, after = Ensemble([net]).loss(x, labels), Ensemble([net]).loss(adv, labels)
    assert torch.all(after > before), "PGD raises the surrogate's margin loss"


def test_targeted_pgd_reaches_the_asked_class_within_each_rows_own_radius(surrogate_dir):
    from attacks.whitebox.surrogate import Ensemble, load_surrogate, pgd_l2

    net = load_surrogate(str(surrogate_dir))[0]
    x = torch.rand(4, 1, 28, 28)
    labels = net(x).argmax(1)
    targets = (labels + torch.tensor([1, 2, 3, 4])) % 10
    radius = torch.tensor([0.5, 1.0, 8.0, 8.0])
    adv = pgd_l2(Ensemble([net]), x, labels, radius, steps=20, momentum=0.9, batch_size=3, targets=targets)
    assert torch.all((adv - x).flatten(1).norm(dim=1) <= radius + 1e-4)
    assert torch.equal(net(adv[2:]).argmax(1), targets[2:]), "a wide enough ball reaches the asked class"
    lifted = Ensemble([net]).loss(adv, labels, targets) - Ensemble([net]).loss(x, labels, targets)
    assert torch.all(lifted > 0), "every row moves toward its own target"


def test_targeted_lines_reach_the_targets_nearest_class_when_the_surrogates_nearest_is_another(tmp_path, linear):
    """A surrogate with the target's weights but a bias toward class 2: its untargeted direction heads for class 2
    even where the target's nearest boundary is another class's; the targeted lines find that one."""
    problem, _ = linear
    weights = problem.model.net[1].weight.detach()
    biased = torch.nn.Linear(weights.shape[1], 3)
    biased.weight.data, biased.bias.data = weights.clone(), torch.tensor([0.0, 0.0, 0.6])
    art = save_linear(torch.nn.Sequential(torch.nn.Flatten(), biased), tmp_path / "biased")

    def ratios(targets: int) -> np.ndarray:
        model = BudgetedModel(problem.model, problem.images, problem.labels, budget=200)
        TransferAttack(surrogates=(str(art),), targets=targets, refine=None).run(
            model, np.arange(len(problem.images)), np.random.default_rng(0))
        assert model.used.max() <= 200
        return model.best_l2 / problem.exact

    untargeted, targeted = ratios(0), ratios(2)
    assert untargeted.max() > 1.05, "the fixture must mislead the untargeted lines somewhere"
    assert np.all(targeted >= 1 - 1e-9) and targeted.max() <= 1.02


def test_ensembles_by_kind_weight_natural_and_robust_surrogates_equally_then_attack_each_kind_alone(tmp_path,
                                                                                                    surrogate_dir):
    from attacks.whitebox.surrogate import Ensemble, ensembles_by_kind, load_surrogate

    robust = str(surrogate_dir)  # training.loss "trades"
    natural = [str(make_artifact(tmp_path / f"natural{i}", training={"loss": "natural"}, seed=i + 1))
               for i in range(2)]
    whole, natural_only, robust_only = ensembles_by_kind([natural[0], robust, natural[1]], (28, 28, 1), 10)
    nets = {p: load_surrogate(p, "cpu")[0] for p in [robust, *natural]}
    assert whole.nets == [nets[natural[0]], nets[natural[1]], nets[robust]]
    assert whole.weights.tolist() == [0.25, 0.25, 0.5]
    assert natural_only.nets == [nets[natural[0]], nets[natural[1]]] and robust_only.nets == [nets[robust]]
    assert len(ensembles_by_kind(natural, (28, 28, 1), 10)) == 1, "one kind: just the ensemble of all"
    x = torch.rand(4, 1, 28, 28)
    labels = torch.arange(4)
    torch.testing.assert_close(Ensemble([nets[natural[0]], nets[robust]], weights=[0, 1]).loss(x, labels),
                               Ensemble([nets[robust]]).loss(x, labels))
    with pytest.raises(ValueError, match="one non-negative weight per surrogate"):
        Ensemble([nets[robust]], weights=[1, 1])
