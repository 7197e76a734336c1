"""AutoAttack (Croce & Hein, ICML 2020), the standard version, for the white-box evaluation.

The four attacks are torchattacks' (APGD-CE, APGD-T, FAB-T, Square), each built with the settings the
reference implementation's ``version='standard'`` gives it, and run in its order: each attack sees only the
images that were classified correctly and that every earlier attack failed on, so the accuracy after the last
one is the per-image worst case over the four, and the accuracy after each one is reported too.

Why torchattacks (and not the adversarial-robustness-toolbox), and why not its own ``AutoAttack`` class, whose
APGD and FAB run 10 iterations where the reference runs 100: docs/training.md "AutoAttack". torchattacks pins
an old ``requests``, so it has an extra of its own (``autoattack``) rather than joining ``train``.

The attacks see the model exactly as the PGD evaluation does: float N x C x H x W in [0, 1] (the model
normalises inside), fp32, eval mode. Every adversarial is projected onto the threat model with
:func:`training.pgd.project` before it is counted, so an attack's numerical slack cannot count as a success.
"""
from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from training.engine import Runtime
from training.pgd import NORMS, project

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version's attacks, in the reference's order
EXTRA = "autoattack"
MISSING = f"torchattacks is not installed here; pip install 'trades-avc[{EXTRA}]'"


class ConfigError(ValueError):
    """A threat model AutoAttack cannot run (a radius of 0: its step sizes are fractions of it)."""


@dataclass(frozen=True)
class AutoAttackConfig:
    """The threat model and the attacks' budgets; the defaults are the reference's standard version.

    ``steps``: iterations of APGD-CE, APGD-T and FAB-T (100). ``queries``: Square's query budget (5000).
    ``target_classes``: the highest-scoring wrong classes APGD-T and FAB-T each try in turn (9; fewer when
    the data set has fewer wrong classes). One restart each, as in the standard version. Lower budgets are
    for tests and quick looks; :attr:`standard` then says False and :meth:`describe` names the budgets.
    """

    norm: str = "linf"
    epsilon: float = 0.031
    steps: int = 100
    queries: int = 5000
    target_classes: int = 9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if not self.epsilon > 0:
            raise ConfigError(f"AutoAttack needs a radius > 0, got epsilon {self.epsilon:g}")

    @property
    def standard(self) -> bool:
        """Whether these are the standard version's budgets (the only ones a reported figure should use)."""
        return (self.steps, self.queries, self.target_classes) == (100, 5000, 9)

    def describe(self) -> str:
        """One line for summaries and the artifact's metrics, e.g. ``AutoAttack standard linf eps=0.1``."""
        version = "standard" if self.standard else (f"custom (steps={self.steps} queries={self.queries} "
                                                    f"targets={self.target_classes})")
        return f"AutoAttack {version} {self.norm} eps={self.epsilon:g}"


def available() -> bool:
    """Whether torchattacks can be imported (the ``autoattack`` extra); callers check it before any work."""
    return importlib.util.find_spec("torchattacks") is not None


def metric_key(component: str) -> str:
    """The result key of the robust accuracy after ``component`` (``apgd-t`` -> ``autoattack_accuracy_apgd_t``)."""
    return f"autoattack_accuracy_{component.replace('-', '_')}"


def build_components(model: nn.Module, cfg: AutoAttackConfig, num_classes: int,
                     device: torch.device) -> list[tuple[str, Any]]:
    """``(name, torchattacks attack)`` for each of :data:`COMPONENTS`, with the settings the authors' reference
    implementation gives its own four in the standard version (docs/training.md "AutoAttack" has the table)."""
    import torchattacks

    norm = {"linf": "Linf", "l2": "L2"}[cfg.norm]
    # torchattacks' APGDT and FAB try n_classes - 1 targets, the reference a fixed 9 (capped by the classes there are)
    n_classes = min(num_classes, cfg.target_classes + 1)
    common = {"norm": norm, "eps": cfg.epsilon, "seed": cfg.seed, "n_restarts": 1}
    attacks = [
        ("apgd-ce", torchattacks.APGD(model, steps=cfg.steps, loss="ce", eot_iter=1, rho=0.75, **common)),
        ("apgd-t", torchattacks.APGDT(model, steps=cfg.steps, n_classes=n_classes, eot_iter=1, rho=0.75, **common)),
        ("fab-t", torchattacks.FAB(model, steps=cfg.steps, multi_targeted=True, n_classes=n_classes,
                                   alpha_max=0.1, eta=1.05, beta=0.9, **common)),
        # The reference keeps p's schedule as written for 5000 queries and advises rescaling it to other budgets.
        ("square", torchattacks.Square(model, n_queries=cfg.queries, p_init=0.8, loss="margin",
                                       resc_schedule=cfg.queries != 5000, **common)),
    ]
    for _, attack in attacks:
        attack.set_device(device)  # torchattacks guesses it from the first parameter; say it
    return attacks


@contextlib.contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """FAB calls ``backward()``, which would also compute (and accumulate) every weight's gradient; only the
    input's is needed, so the weights stop asking for one until the block ends."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def autoattack_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, rt: Runtime,
                        batch_size: int, cfg: AutoAttackConfig, num_classes: int, progress: bool = True,
                        desc: str = "autoattack") -> dict[str, float]:
    """Accuracy under AutoAttack on uint8 N x H x W x C ``images``, and after each component, in fp32.

    Returns ``autoattack_accuracy`` (after all four), ``autoattack_accuracy_<component>`` for each of
    :data:`COMPONENTS` (the robust accuracy once it has run: non-increasing in that order; a component left
    with no image to attack keeps the value before it), and ``autoattack_seconds``.
    """
    start = time.perf_counter()
    model.eval()
    fp32 = Runtime(rt.device, bf16=False, channels_last=rt.channels_last)
    robust = torch.zeros(len(images), dtype=torch.bool)
    with torch.no_grad():
        for chunk in torch.arange(len(images)).split(batch_size):
            robust[chunk] = (model(fp32.to_input(images[chunk])).argmax(1) == labels[chunk].to(rt.device)).cpu()
    n = max(len(images), 1)
    result: dict[str, float] = {}
    with _input_gradients_only(model), tqdm(total=len(COMPONENTS), desc=desc, leave=False,
                                            disable=not progress) as bar:
        for name, attack in build_components(model, cfg, num_classes, rt.device):
            bar.set_postfix(attack=name, robust=f"{robust.sum().item() / n:.3f}")
            for chunk in robust.nonzero().squeeze(1).split(batch_size):
                x, y = fp32.to_input(images[chunk]), labels[chunk].to(rt.device)
                x_adv = project(attack(x, y).detach(), x, cfg.epsilon, cfg.norm)
                with torch.no_grad():
                    fooled = (model(x_adv).argmax(1) != y).cpu()
                robust[chunk[fooled]] = False
            result[metric_key(name)] = robust.sum().item() / n
            bar.update()
    result["autoattack_accuracy"] = robust.sum().item() / n
    result["autoattack_seconds"] = round(time.perf_counter() - start, 2)
    return result


def config_record(cfg: AutoAttackConfig) -> dict[str, Any]:
    """The configuration as JSON data: its fields, the version and the components in their order."""
    return {"version": "standard" if cfg.standard else "custom", "components": list(COMPONENTS), **asdict(cfg)}
