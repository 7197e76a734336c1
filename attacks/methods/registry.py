"""The one map from attack names to classes, and how suites and their names are built from it.

``ATTACKS`` is what ``--attacks`` and the presets (:mod:`attacks.methods.suite`) name;
constructors take the hyperparameters as keyword arguments (the dataclass fields).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import torch

from attacks.methods.base import Attack
from attacks.methods.biased import BiasedBoundaryAttack
from attacks.methods.boundary import BoundaryAttack
from attacks.methods.geoda import GeoDA
from attacks.methods.hsja import HopSkipJump
from attacks.methods.noise import AdditiveGaussianNoise, AdditiveUniformNoise, BlendedUniformNoise, ContrastReduction
from attacks.methods.other_class import OtherClassBlend
from attacks.methods.suite import PRESETS, SURROGATE_ATTACKS, SuiteEntry
from attacks.methods.transfer import TransferAttack

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


def build_attack(entry: SuiteEntry, surrogates: Sequence[str] = (), device: str | torch.device = "cpu") -> Attack:
    """The attack ``entry`` describes; surrogate attacks in it, nested ones too, craft on ``surrogates``, with their
    gradients on ``device``."""
    if entry.needs_surrogates and not surrogates:
        raise ValueError(f"attack {entry.name!r} needs surrogate model artifact folders; none given")
    kwargs = {k: build_attack(v, surrogates, device) if isinstance(v, SuiteEntry) else v
              for k, v in entry.kwargs.items()}
    if entry.name in SURROGATE_ATTACKS:
        kwargs["surrogates"] = tuple(map(str, surrogates))
        kwargs["device"] = device
    return create_attack(entry.name, **kwargs)


def build_suite(preset: str, surrogates: Sequence[str] = (), device: str | torch.device = "cpu") -> list[Attack]:
    """The attacks of ``PRESETS[preset]``, built by :func:`build_attack` with ``surrogates`` (artifact folders) and
    ``device`` (where their gradients run).

    With no surrogates, entries that need them are left out and a ``UserWarning`` says which.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    entries = PRESETS[preset] if surrogates else [e for e in PRESETS[preset] if not e.needs_surrogates]
    dropped = list(dict.fromkeys(e.name for e in PRESETS[preset] if e not in entries))
    if dropped:
        warnings.warn(f"preset {preset!r}: left out {', '.join(dropped)} (no surrogate models given; "
                      f"pass surrogate artifact folders to use them)", UserWarning, stacklevel=2)
    return [build_attack(e, surrogates, device) for e in entries]


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
