"""Decision-based (label-only) attacks under a per-image query budget, scored by verified min L2.

Usage::

    model = BudgetedModel(RemoteModel(client), images, labels, budget=1000)
    for attack in (create_attack("other_class"), create_attack("geoda")):
        with model.tagged(repr(attack)):
            attack.run(model, ids, rng)
    model.best_l2  # per image: verified L2 on [0, 1] (0 if misclassified, inf if not fooled)

``ATTACKS`` is the one map from names to attack classes (constructors take the
hyperparameters as keyword arguments).
"""
from __future__ import annotations

from attacks.base import Attack
from attacks.boundary import BoundaryAttack
from attacks.budgeted import BudgetedModel, BudgetExceeded
from attacks.geoda import GeoDA
from attacks.hsja import HopSkipJump
from attacks.model import ArtifactModel, LabelOnlyModel, ModelInfo, RemoteModel, TorchModel
from attacks.noise import AdditiveGaussianNoise, AdditiveUniformNoise, BlendedUniformNoise, ContrastReduction
from attacks.other_class import OtherClassBlend

ATTACKS: dict[str, type[Attack]] = {
    "additive_uniform": AdditiveUniformNoise,
    "additive_gaussian": AdditiveGaussianNoise,
    "blended_uniform": BlendedUniformNoise,
    "contrast": ContrastReduction,
    "other_class": OtherClassBlend,
    "boundary": BoundaryAttack,
    "hsja": HopSkipJump,
    "geoda": GeoDA,
}


def create_attack(name: str, **kwargs) -> Attack:
    """The attack registered as ``name``, configured by ``kwargs`` (its dataclass fields)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](**kwargs)


__all__ = ["ATTACKS", "AdditiveGaussianNoise", "AdditiveUniformNoise", "ArtifactModel", "Attack", "BlendedUniformNoise",
           "BoundaryAttack", "BudgetExceeded", "BudgetedModel", "ContrastReduction", "GeoDA", "HopSkipJump",
           "LabelOnlyModel", "ModelInfo", "OtherClassBlend", "RemoteModel", "TorchModel", "create_attack"]
