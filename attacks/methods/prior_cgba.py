"""CGBA guided by transfer priors: CGBA's semicircle search (:mod:`attacks.methods.cgba`) along a normal estimate that
the surrogates' gradients at the current boundary point join, each weighted by its measured agreement with the target
(:mod:`attacks.methods.surrogate_prior`, as in :mod:`attacks.methods.prior_geoda`; after Prior-OPT, Ma et al., "Boosting
Ray Search Procedure of Hard-label Attacks with Transfer-based Priors", ICLR 2025, and SQBA, Park, Miller & McLaughlin,
WACV 2024).

Why this method. At the competition's 64x64x3 CGBA is the best label-only search measured, and there the surrogates'
gradients are worth most: on the 64x64x3 Fashion-MNIST proxy a better-trained natural surrogate took the transfer
attack's median from 3.99 to 2.26 and prior_geoda's from 3.81 to 2.67 (docs/benchmarks.md "Better surrogates on the
proxy"). CGBA estimates each iteration's normal from that iteration's probes alone, a few dozen of them in hundreds of
dimensions, so a prior that the probes confirm adds most to it. With a useless surrogate the prior gets no weight and
the attack is CGBA; with ``caution`` (:mod:`attacks.methods.surrogate_prior`) a weakly trained one costs it nothing
measurable either (natural proxy median 3.06 against CGBA's 3.07; 3.58 without ``caution``).
"""
from __future__ import annotations

from dataclasses import dataclass

from attacks.methods.cgba import CGBA
from attacks.methods.surrogate_prior import SurrogatePriors


@dataclass(frozen=True)
class PriorCGBA(SurrogatePriors, CGBA):
    """CGBA's hyperparameters and the priors' (:class:`attacks.methods.surrogate_prior.SurrogatePriors`), with
    ``caution`` 1: each iteration steers by its own probes, so an overrated prior costs more than in GeoDA."""

    caution: float = 1.0
