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

import dataclasses
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


def build_attack(entry: SuiteEntry, surrogates: Sequence[str] = ()) -> Attack:
    """The attack ``entry`` describes; surrogate attacks in it, nested ones too, craft on ``surrogates``."""
    if entry.needs_surrogates and not surrogates:
        raise ValueError(f"attack {entry.name!r} needs surrogate model artifact folders; none given")
    kwargs = {k: build_attack(v, surrogates) if isinstance(v, SuiteEntry) else v for k, v in entry.kwargs.items()}
    if entry.name in SURROGATE_ATTACKS:
        kwargs["surrogates"] = tuple(map(str, surrogates))
    return create_attack(entry.name, **kwargs)


def build_suite(preset: str, surrogates: Sequence[str] = ()) -> list[Attack]:
    """The attacks of ``PRESETS[preset]``, built by :func:`build_attack` with ``surrogates`` (artifact folders).

    With no surrogates, entries that need them are left out and a ``UserWarning`` says which.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    entries = PRESETS[preset] if surrogates else [e for e in PRESETS[preset] if not e.needs_surrogates]
    dropped = list(dict.fromkeys(e.name for e in PRESETS[preset] if e not in entries))
    if dropped:
        warnings.warn(f"preset {preset!r}: left out {', '.join(dropped)} (no surrogate models given; "
                      f"pass surrogate artifact folders to use them)", UserWarning, stacklevel=2)
    return [build_attack(e, surrogates) for e in entries]


def attack_name(attack: Attack) -> str:
    """Its ``ATTACKS`` name, plus ``+`` the refining attack's when that is not the default (``transfer+hsja``)."""
    name = next((n for n, cls in ATTACKS.items() if type(attack) is cls), type(attack).__name__)
    default = {f.name: f.default for f in dataclasses.fields(attack)}.get("refine")
    refine = getattr(attack, "refine", None)
    return f"{name}+{attack_name(refine)}" if isinstance(refine, Attack) and refine != default else name


def name_attacks(attacks: Sequence[Attack]) -> dict[str, Attack]:
    """The attacks keyed by :func:`attack_name`, in order; a repeated name gets ``-2``, ``-3``, ..."""
    named: dict[str, Attack] = {}
    for attack in attacks:
        name = base = attack_name(attack)
        count = 2
        while name in named:
            name, count = f"{base}-{count}", count + 1
        named[name] = attack
    return named


__all__ = ["ATTACKS", "PRESETS", "SURROGATE_ATTACKS", "AdditiveGaussianNoise", "AdditiveUniformNoise",
           "ArtifactModel", "Attack", "BiasedBoundaryAttack", "BlendedUniformNoise", "BoundaryAttack",
           "BudgetExceeded", "BudgetedModel", "ContrastReduction", "GeoDA", "HopSkipJump", "LabelOnlyModel",
           "ModelInfo", "OtherClassBlend", "RemoteModel", "SuiteEntry", "TorchModel", "TransferAttack",
           "attack_name", "build_attack", "build_suite", "create_attack", "name_attacks"]
