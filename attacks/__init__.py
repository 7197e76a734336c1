"""Decision-based (label-only) attacks under a per-image query budget, scored by verified min L2.

Usage::

    model = BudgetedModel(RemoteModel(client), images, labels, budget=1000)
    for attack in (create_attack("other_class"), create_attack("geoda")):
        with model.tagged(repr(attack)):
            attack.run(model, ids, rng)
    model.best_l2  # per image: verified L2 on [0, 1] (0 if misclassified, inf if not fooled)

``ATTACKS`` is the one map from names to attack classes (constructors take the
hyperparameters as keyword arguments); ``PRESETS`` names suites of them, and
``build_suite("top5", surrogates=[ARTIFACT_DIR, ...])`` configures one.
"""
from __future__ import annotations

import warnings
from typing import Sequence

from attacks.base import Attack
from attacks.biased import BiasedBoundaryAttack
from attacks.boundary import BoundaryAttack
from attacks.budgeted import BudgetedModel, BudgetExceeded
from attacks.geoda import GeoDA
from attacks.hsja import HopSkipJump
from attacks.model import ArtifactModel, LabelOnlyModel, ModelInfo, RemoteModel, TorchModel
from attacks.noise import AdditiveGaussianNoise, AdditiveUniformNoise, BlendedUniformNoise, ContrastReduction
from attacks.other_class import OtherClassBlend
from attacks.suite import PRESETS, SURROGATE_ATTACKS, SuiteEntry
from attacks.transfer import TransferAttack

ATTACKS: dict[str, type[Attack]] = {
    "additive_uniform": AdditiveUniformNoise,
    "additive_gaussian": AdditiveGaussianNoise,
    "blended_uniform": BlendedUniformNoise,
    "contrast": ContrastReduction,
    "other_class": OtherClassBlend,
    "boundary": BoundaryAttack,
    "hsja": HopSkipJump,
    "geoda": GeoDA,
    "biased_boundary": BiasedBoundaryAttack,
    "transfer": TransferAttack,
}


def create_attack(name: str, **kwargs) -> Attack:
    """The attack registered as ``name``, configured by ``kwargs`` (its dataclass fields)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](**kwargs)


def build_suite(preset: str, surrogates: Sequence[str] = ()) -> list[Attack]:
    """The attacks of ``PRESETS[preset]``; those in ``SURROGATE_ATTACKS`` craft on ``surrogates`` (artifact folders).

    With no surrogates, entries that need them are left out and a ``UserWarning`` says which.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    attacks, dropped = [], []
    for entry in PRESETS[preset]:
        if not entry.needs_surrogates:
            attacks.append(create_attack(entry.name, **entry.kwargs))
        elif surrogates:
            attacks.append(create_attack(entry.name, **entry.kwargs, surrogates=tuple(map(str, surrogates))))
        else:
            dropped.append(entry.name)
    if dropped:
        warnings.warn(f"preset {preset!r}: left out {', '.join(dropped)} (no surrogate models given; "
                      f"pass surrogate artifact folders to use them)", UserWarning, stacklevel=2)
    return attacks


__all__ = ["ATTACKS", "PRESETS", "SURROGATE_ATTACKS", "AdditiveGaussianNoise", "AdditiveUniformNoise",
           "ArtifactModel", "Attack", "BiasedBoundaryAttack", "BlendedUniformNoise", "BoundaryAttack",
           "BudgetExceeded", "BudgetedModel", "ContrastReduction", "GeoDA", "HopSkipJump", "LabelOnlyModel",
           "ModelInfo", "OtherClassBlend", "RemoteModel", "SuiteEntry", "TorchModel", "TransferAttack", "build_suite",
           "create_attack"]
