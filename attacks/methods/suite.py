"""Named attack suites (presets): which attacks a score runs, with their hyperparameters and sources.

A suite is data (CONTRIBUTING.md "House style", after Foolbox): a tuple of :class:`SuiteEntry`, each an
``ATTACKS`` name, its keyword arguments and the paper it comes from. Each attack of a
suite gets its own per-image budget and the image's score is the minimum over them, so
the best suites combine attacks that win on *different* images. Chained (``score.py --chain``),
each attack starts from the closest points of those before it, in the suite's order.

Attacks that use local surrogate models (``transfer``, ``biased_boundary``, ``prior_geoda``, ``prior_cgba``) get the
surrogate artifact folders, and the device their gradients run on, from :func:`attacks.build_suite`; without any
surrogates, they are left out with a warning. An entry's keyword argument may itself be a :class:`SuiteEntry` (a
transfer attack's ``refine``), built the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# these get the surrogates, and the device for their gradients, from build_suite
SURROGATE_ATTACKS = frozenset({"transfer", "biased_boundary", "prior_geoda", "prior_cgba"})


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a preset: ``name`` in ``ATTACKS``, its hyperparameters, and its source."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def needs_surrogates(self) -> bool:
        """Whether this attack, or one nested in its keyword arguments, crafts on surrogate models."""
        return self.name in SURROGATE_ATTACKS or any(
            isinstance(v, SuiteEntry) and v.needs_surrogates for v in self.kwargs.values())


HSJA = SuiteEntry("hsja", source="Chen, Jordan & Wainwright, HopSkipJumpAttack, IEEE S&P 2020")
GEODA = SuiteEntry("geoda", source="Rahmati, Moosavi-Dezfooli, Frossard & Dai, GeoDA, CVPR 2020")
CGBA = SuiteEntry("cgba", source="Reza, Rahmati, Wu & Dai, CGBA: Curvature-aware Geometric Black-box Attack, "
                                 "ICCV 2023")
BIASED = SuiteEntry("biased_boundary", source="Brunner, Diehl, Truong Le & Knoll, Guessing Smart: Biased Sampling "
                                              "for Efficient Black-Box Adversarial Attacks, ICCV 2019")
TRANSFER = SuiteEntry("transfer", source="Papernot et al., Transferability in Machine Learning, 2016; Liu et al., "
                                         "Delving into Transferable Adversarial Examples, ICLR 2017; Dong et al., "
                                         "MI-FGSM, CVPR 2018; refined by GeoDA")
PRIOR_GEODA = SuiteEntry("prior_geoda", source="GeoDA (Rahmati et al., CVPR 2020) with transfer priors at the boundary "
                                             "point, as in Prior-OPT (Ma et al., ICLR 2025) and SQBA (Park, Miller & "
                                             "McLaughlin, WACV 2024)")

TRANSFER_CGBA = SuiteEntry("transfer", {"refine": CGBA},
                           source="A transfer start (Papernot et al. 2016; Liu et al., ICLR 2017) refined by CGBA "
                                  "(Reza et al., ICCV 2023)")
PRIOR_CGBA = SuiteEntry("prior_cgba", source="CGBA (Reza et al., ICCV 2023) with transfer priors at the boundary "
                                             "point, as in Prior-OPT (Ma et al., ICLR 2025) and SQBA (Park, Miller & "
                                             "McLaughlin, WACV 2024)")

TRANSFER_BIASED = SuiteEntry("transfer", {"refine": SuiteEntry("biased_boundary", {"gradient_from": "adaptive"})},
                             source="The NeurIPS 2018 AVC untargeted winners' recipe (Brunner et al., ICCV 2019): a "
                                    "transfer start, then a Boundary Attack biased by surrogate gradients (per image, "
                                    "the adversarially trained surrogates' or all of them, whichever steps succeed)")

# Chosen by measuring (bench/presets.py; the figures, commands and machine are in docs/benchmarks.md
# "Choosing the top5 preset"): small CNNs, natural and TRADES, on Fashion-MNIST (28x28x1) and on its 64x64x3
# proxy of the competition's shape, held-out test images, 1000 queries per image for each attack on its own,
# surrogates one PGD-AT and one natural model per shape, scored by the median of the per-image minimum and
# ranked by the geometric mean over the models. With a natural surrogate trained as long as the target, the
# transfer start refined by CGBA is the best attack at 64x64x3 and gives most of the natural proxy's minima; CGBA
# from a random start covers the images where the surrogates mislead (most of the TRADES proxy's) and is what
# remains without surrogates; at 28x28x1 the transfer start, HSJA and the AVC winners' transfer + biased Boundary
# Attack make up the rest. The best five overall (HSJA, prior_geoda, transfer + biased Boundary, transfer + CGBA,
# prior_cgba) were within 1% and keep only HSJA without surrogates. quick is the best pair within top5 that keeps
# a surrogate-free attack. The order is for --chain (docs/benchmarks.md "The biased Boundary Attack's gradient, and
# its place in the chain"): the biased Boundary Attack, with each image's gradient source chosen by its step
# successes, fourth and the GeoDA-refined transfer start after it.
PRESETS: dict[str, tuple[SuiteEntry, ...]] = {
    "top5": (TRANSFER_CGBA, CGBA, HSJA, TRANSFER_BIASED, TRANSFER),
    "quick": (TRANSFER_CGBA, CGBA),
}
