"""The default starting-point search of the boundary attacks: other-class images first, then noise."""
from __future__ import annotations

from attacks.methods.base import Attack
from attacks.methods.noise import BlendedUniformNoise
from attacks.methods.other_class import OtherClassBlend

STARTS: tuple[Attack, ...] = (OtherClassBlend(), BlendedUniformNoise(repeats=20, until_found=True))
