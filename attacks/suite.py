"""Named attack suites (presets): which attacks a score runs, with their hyperparameters and sources.

A suite is data (STYLE.md, after Foolbox): a tuple of :class:`SuiteEntry`, each an
``ATTACKS`` name, its keyword arguments and the paper it comes from. Each attack of a
suite gets its own per-image budget and the image's score is the minimum over them, so
the best suites combine attacks that win on *different* images.

Attacks that use local surrogate models (``transfer``, ``biased_boundary``) get the surrogate artifact
folders from :func:`attacks.build_suite`; without any, they are left out with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SURROGATE_ATTACKS = frozenset({"transfer", "biased_boundary"})  # their ``surrogates`` come from build_suite


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a preset: ``name`` in ``ATTACKS``, its hyperparameters, and its source."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def needs_surrogates(self) -> bool:
        return self.name in SURROGATE_ATTACKS


BOUNDARY = SuiteEntry("boundary", source="Brendel, Rauber & Bethge, Decision-Based Adversarial Attacks, ICLR 2018")
HSJA = SuiteEntry("hsja", source="Chen, Jordan & Wainwright, HopSkipJumpAttack, IEEE S&P 2020")
GEODA = SuiteEntry("geoda", source="Rahmati, Moosavi-Dezfooli, Frossard & Dai, GeoDA, CVPR 2020")
BIASED = SuiteEntry("biased_boundary", source="Brunner, Diehl, Truong Le & Knoll, Guessing Smart: Biased Sampling "
                                              "for Efficient Black-Box Adversarial Attacks, ICCV 2019")
TRANSFER = SuiteEntry("transfer", source="Papernot et al., Transferability in Machine Learning, 2016; Liu et al., "
                                         "Delving into Transferable Adversarial Examples, ICLR 2017; Dong et al., "
                                         "MI-FGSM, CVPR 2018; refined by GeoDA")

# Chosen by measuring (bench/presets.py, command in its docstring): Fashion-MNIST SmallCNNs, natural
# and TRADES, 100 correctly classified test images from index 5000, 1000 queries per image for each
# attack on its own, surrogates one PGD-AT and one natural SmallCNN (2 epochs each). Median of the
# per-image minimum, natural / TRADES: top5 0.374 / 1.123 (the best 5 of the candidates measured) and
# quick 0.380 / 1.163 (the best pair), against 0.417 / 1.286 for GeoDA alone, the best label-only
# attack. The surrogate gradient bias misleads on the natural model (biased boundary 0.60 there vs
# 0.48 unbiased) but wins images on the TRADES one; the transfer start wins on both.
PRESETS: dict[str, tuple[SuiteEntry, ...]] = {
    "top5": (TRANSFER, GEODA, BIASED, BOUNDARY, HSJA),
    "quick": (TRANSFER, GEODA),
}

