"""The one map from attack names to classes, and how suites and their names are built from it.

``ATTACKS`` is what ``--attacks`` and the presets (:mod:`attacks.methods.suite`) name;
constructors take the hyperparameters as keyword arguments (the dataclass fields).

Attacks written elsewhere (an entry of a competition's attack track, a researcher's new method) join it by
declaring an entry point in the group ``trades_avc.attacks`` of their own package (``docs/scoring.md``
"Attacks from other packages"): once that package is installed, its attacks run like the built-in ones, through
``--attacks``, presets, the ledger's budgets and verification. They are found when this module is first
imported; a plugin that fails to import, is not an attack, or takes a name already used is left out with a
warning that says why, so that one broken package cannot stop the built-in attacks.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points

import torch

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
from attacks.methods.suite import PRESETS, SURROGATE_ATTACKS, SuiteEntry
from attacks.methods.tangent import TangentAttack
from attacks.methods.transfer import TransferAttack
from attacks.methods.triangle import TriangleAttack

PLUGIN_GROUP = "trades_avc.attacks"  # the entry-point group other packages register their attacks under

BUILTIN_ATTACKS: dict[str, type[Attack]] = {
    "additive_uniform": AdditiveUniformNoise,
    "additive_gaussian": AdditiveGaussianNoise,
    "blended_uniform": BlendedUniformNoise,
    "contrast": ContrastReduction,
    "other_class": OtherClassBlend,
    "boundary": BoundaryAttack,
    "hsja": HopSkipJump,
    "tangent": TangentAttack,
    "geoda": GeoDA,
    "cgba": CGBA,
    "triangle": TriangleAttack,
    "biased_boundary": BiasedBoundaryAttack,
    "transfer": TransferAttack,
    "prior_geoda": PriorGeoDA,
    "prior_cgba": PriorCGBA,
}


def plugin_attacks(taken: Mapping[str, type[Attack]]) -> dict[str, type[Attack]]:
    """The attacks installed packages declare under :data:`PLUGIN_GROUP`, by entry-point name, except any whose
    name is in ``taken`` or that is not a dataclass subclass of :class:`Attack` (each left out with a warning)."""
    found: dict[str, type[Attack]] = {}
    for point in entry_points(group=PLUGIN_GROUP):
        where = f"attack plugin {point.name!r} ({point.value}, from {point.dist.name if point.dist else 'unknown'})"
        if point.name in taken or point.name in found:
            warnings.warn(f"{where}: left out, the name {point.name!r} is already taken", UserWarning, stacklevel=2)
            continue
        try:
            cls = point.load()
        except Exception as err:  # whatever a third party's import raises, the built-in attacks stay usable
            warnings.warn(f"{where}: left out, it failed to import ({type(err).__name__}: {err})", UserWarning,
                          stacklevel=2)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Attack) and dataclasses.is_dataclass(cls)):
            warnings.warn(f"{where}: left out, expected a dataclass subclass of attacks.Attack, got {cls!r}",
                          UserWarning, stacklevel=2)
            continue
        found[point.name] = cls
    return found


ATTACKS: dict[str, type[Attack]] = {**BUILTIN_ATTACKS, **plugin_attacks(BUILTIN_ATTACKS)}


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
