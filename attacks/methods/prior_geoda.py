"""GeoDA guided by transfer priors: the surrogates' gradients at the current boundary point join the label-only normal
estimate, each weighted by how well it has agreed with the target's own answers (after Prior-OPT, Ma et al.,
"Boosting Ray Search Procedure of Hard-label Attacks with Transfer-based Priors", ICLR 2025, and SQBA, Park, Miller &
McLaughlin, "Hard-label based Small Query Black-box Adversarial Attack", WACV 2024).

Why this method. Prior-OPT and Prior-Sign-OPT put the surrogate gradient of the distance-to-boundary function, taken
at the current ray, among the directions of each gradient estimate; SQBA steps along the surrogate gradient while
that keeps working and then falls back to HopSkipJump. Both use the prior *at the current point*, every iteration,
which the transfer attack (:mod:`attacks.methods.transfer`) does not: it uses the surrogates once, for the start.
Our strongest attack without surrogates is GeoDA (:mod:`attacks.methods.geoda`), whose normal estimate is a running
sum of signed low-frequency probes; Prior-OPT's ray search spends a bisection on every derivative it measures, too
dear at 1000 queries. So the prior goes into GeoDA's estimate, at no query cost, and each iteration is GeoDA's.

How much each prior weighs, and which priors there are: :mod:`attacks.methods.surrogate_prior`.
"""
from __future__ import annotations

from dataclasses import dataclass

from attacks.methods.geoda import GeoDA
from attacks.methods.surrogate_prior import SurrogatePriors


@dataclass(frozen=True)
class PriorGeoDA(SurrogatePriors, GeoDA):
    """GeoDA's hyperparameters and the priors' (:class:`attacks.methods.surrogate_prior.SurrogatePriors`)."""
