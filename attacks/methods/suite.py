"""Named attack suites (presets): which attacks a score runs, with their hyperparameters and sources.

A suite is data (CONTRIBUTING.md "House style", after Foolbox): a tuple of :class:`SuiteEntry`, each an
``ATTACKS`` name, its keyword arguments and the paper it comes from. Each attack of a
suite gets its own per-image budget and the image's score is the minimum over them, so
the best suites combine attacks that win on *different* images.

Attacks that use local surrogate models (``transfer``, ``biased_boundary``, ``prior_geoda``) get the surrogate
artifact folders, and the device their gradients run on, from :func:`attacks.build_suite`; without any surrogates,
they are left out with a warning. An entry's keyword argument may itself be a :class:`SuiteEntry` (a transfer
attack's ``refine``), built the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SURROGATE_ATTACKS = frozenset({"transfer", "biased_boundary", "prior_geoda"})  # surrogates, device: build_suite's


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

TRANSFER_BIASED = SuiteEntry("transfer", {"refine": SuiteEntry("biased_boundary", {"gradient_from": "robust"})},
                             source="The NeurIPS 2018 AVC untargeted winners' recipe (Brunner et al., ICCV 2019): a "
                                    "transfer start, then a Boundary Attack biased by an adversarially trained "
                                    "surrogate's gradient")

# Chosen by measuring (bench/presets.py; the figures, command and machine are in docs/benchmarks.md
# "Choosing the top5 preset"): Fashion-MNIST SmallCNNs, natural and TRADES, 100 held-out test images,
# 1000 queries per image for each attack on its own, surrogates one PGD-AT and five natural SmallCNNs,
# scored by the median of the per-image minimum. top5 is within noise of the best five of the 11
# candidates measured; quick, two of its attacks, comes within a few percent of it. GeoDA is the best
# attack that needs no surrogates. The transfer start is the best single attack on the natural model;
# on the TRADES one it ties with the transfer start refined by a Boundary Attack biased by the PGD-AT
# surrogate's gradient, the AVC winners' recipe, whose bias misleads on the natural model.
PRESETS: dict[str, tuple[SuiteEntry, ...]] = {
    "top5": (TRANSFER, GEODA, BIASED, HSJA, TRANSFER_BIASED),
    "quick": (TRANSFER, GEODA),
}
