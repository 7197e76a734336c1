"""Attacks from other packages: an installed package's ``trades_avc.attacks`` entry point runs like a built-in."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import SHAPE, make_artifact

from attacks import ArtifactModel
from avc_common.data.evalset import write_folder

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
    """A third party's attack: bisect from each image toward a flat grey image of each ``levels``."""
    from dataclasses import dataclass

    import numpy as np

    from attacks import Attack
    from attacks.blocks.linesearch import bisect


    @dataclass(frozen=True)
    class TowardGrey(Attack):
        levels: tuple[float, ...] = (0.0, 0.5, 1.0)

        def _run(self, model, ids, rng):
            clean = model.clean(ids)
            for level in self.levels:
                target = np.full_like(clean, level)
                hit = model.is_adversarial(target, ids)
                bisect(model, ids[hit], clean[hit], target[hit])


    NotAnAttack = object
'''
ENTRY_POINTS = """\
[trades_avc.attacks]
toward_grey = grey_plugin:TowardGrey
hsja = grey_plugin:TowardGrey
missing = grey_plugin.nowhere:Nothing
not_an_attack = grey_plugin:NotAnAttack
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder on which the plugin package is installed as pip would leave it: the module and its dist-info."""
    site = tmp_path_factory.mktemp("site")
    (site / "grey_plugin").mkdir()
    (site / "grey_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "grey_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: grey-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def run_score(site: Path, *argv: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "attacks/score.py", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_installed_plugin_attack_is_scored_like_a_built_in_one(site, tmp_path):
    art = make_artifact(tmp_path / "art")
    images = np.random.default_rng(3).integers(0, 256, size=(6, *SHAPE), dtype=np.uint8)
    data = write_folder(tmp_path / "data", images, ArtifactModel(art)(images))
    out = tmp_path / "out"
    done = run_score(site, "--model", art, "--data", data, "--attacks", "toward_grey,hsja", "--budget", "30",
                     "--no-reference", "--no-progress", "--output", out)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    attacks = result["summary"]["attacks"]
    assert set(attacks) == {"toward_grey", "hsja"}
    assert attacks["toward_grey"]["fooled"] > 0  # it ran, and its adversarials passed the ledger's verification
    assert 0 < attacks["toward_grey"]["queries_max"] <= 30  # the ledger's budget holds for it as for built-ins
    assert result["summary"]["unverified"] == []
    # the broken entries are left out with the reason, and the built-in hsja keeps its name
    assert "'missing'" in done.stderr and "failed to import" in done.stderr
    assert "'not_an_attack'" in done.stderr and "expected a dataclass subclass" in done.stderr
    assert "'hsja'" in done.stderr and "already taken" in done.stderr


def test_the_plugin_is_listed_in_the_help_and_unknown_names_are_bad_input(site):
    help_text = run_score(site, "--help")
    assert help_text.returncode == 0 and "toward_grey" in help_text.stdout
    unknown = run_score(site, "--model", "nowhere", "--attacks", "not_an_attack")
    assert unknown.returncode == 2
