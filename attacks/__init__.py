"""Decision-based (label-only) attacks under a per-image query budget, scored by verified min L2.

Usage, in one call (:mod:`attacks.scoring.api`)::

    results = attacks.score(net, images, labels, surrogates=[surrogate_net])
    results.distances, results.summary["median"], results.save("runs/score")

or piece by piece::

    model = BudgetedModel(RemoteModel(client), images, labels, budget=1000)
    for attack in (create_attack("other_class"), create_attack("geoda")):
        with model.tagged(repr(attack)):
            attack.run(model, ids, rng)
    model.best_l2  # per image: verified L2 on [0, 1] (0 if misclassified, inf if not fooled)

The package is in layers, each importing only the ones above it:

- :mod:`attacks.access`: the attacks' view of a model (``LabelOnlyModel``) and the per-image
  ledger (``BudgetedModel``) that charges and verifies every query on the uint8 lattice;
- :mod:`attacks.blocks`: building blocks (random directions, label-only gradient estimates,
  line searches);
- :mod:`attacks.whitebox`: surrogate models the harness owns, and the white-box reference;
- :mod:`attacks.methods`: the attacks, the ``ATTACKS`` registry and the named suites;
- :mod:`attacks.scoring`: the scoring pipeline, its report and plots, and the scorer's command.

This module only re-exports the public names.
"""
from attacks.access.budgeted import BudgetedModel, BudgetExceeded
from attacks.access.label_only import ArtifactModel, LabelOnlyModel, RemoteModel, TorchModel
from attacks.methods.base import Attack
from attacks.methods.biased import BiasedBoundaryAttack
from attacks.methods.boundary import BoundaryAttack
from attacks.methods.cgba import CGBA
from attacks.methods.geoda import GeoDA
from attacks.methods.hsja import HopSkipJump
from attacks.methods.noise import AdditiveGaussianNoise, AdditiveUniformNoise, BlendedUniformNoise, ContrastReduction
from attacks.methods.other_class import OtherClassBlend
from attacks.methods.prior_cgba import PriorCGBA
from attacks.methods.prior_geoda import PriorGeoDA
from attacks.methods.registry import ATTACKS, attack_name, build_attack, build_suite, create_attack, name_attacks
from attacks.methods.suite import PRESETS, SURROGATE_ATTACKS, SuiteEntry
from attacks.methods.tangent import TangentAttack
from attacks.methods.transfer import TransferAttack
from attacks.methods.triangle import TriangleAttack
from attacks.scoring.api import Results, score

__all__ = ["ATTACKS", "CGBA", "PRESETS", "SURROGATE_ATTACKS", "AdditiveGaussianNoise", "AdditiveUniformNoise",
           "ArtifactModel", "Attack", "BiasedBoundaryAttack", "BlendedUniformNoise", "BoundaryAttack",
           "BudgetExceeded", "BudgetedModel", "ContrastReduction", "GeoDA", "HopSkipJump", "LabelOnlyModel",
           "OtherClassBlend", "PriorCGBA", "PriorGeoDA", "RemoteModel", "Results", "SuiteEntry", "TangentAttack",
           "TorchModel", "TransferAttack", "TriangleAttack",
           "attack_name", "build_attack", "build_suite", "create_attack", "name_attacks", "score"]
