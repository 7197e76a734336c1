"""Every bench script runs as ``python bench/NAME.py`` from the repo root: --help exits 0 and explains each flag,
and no file in bench/ hides a module the scripts import (run as a script, its folder comes first on the path)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One interpreter for all scripts (torch is imported once): each runs as `python bench/NAME.py --help` would run it,
# with bench/ as sys.path[0]; every parser's flags are recorded on the way.
PROBE = r"""
import argparse, contextlib, io, json, runpy, sys
from pathlib import Path

bench = Path("bench").resolve()
flags, report = {}, {}
parse_args = argparse.ArgumentParser.parse_args

def recording(self, *args, **kwargs):
    flags[self.prog] = [(a.option_strings, a.help) for a in self._actions]
    return parse_args(self, *args, **kwargs)

argparse.ArgumentParser.parse_args = recording
for script in sorted(bench.glob("*.py")):
    if script.name == "__init__.py":
        continue
    sys.path[0], sys.argv, out, code = str(bench), [str(script), "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    report[script.name] = {"code": code, "help": out.getvalue(), "flags": flags.get(script.name)}
hidden = sorted(name for name, module in list(sys.modules.items())  # not __main__ and its multiprocessing alias
                if name.partition(".")[0] not in ("bench", "") and not name.startswith("__")
                and getattr(module, "__file__", None)
                and Path(module.__file__).resolve().parent == bench)
print(json.dumps({"scripts": report, "hidden": hidden}))
"""


def test_every_bench_script_helps_without_path_edits_or_shadowed_imports():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["hidden"] == [], "modules imported from bench/ by a top-level name: rename those files"
    scripts = found["scripts"]
    assert {"attack_bench.py", "presets.py", "server.py", "surrogates.py", "train_step.py"} <= set(scripts)
    for name, run in scripts.items():
        assert run["code"] in (0, None) and run["help"].startswith(f"usage: {name}"), (name, run["help"])
        assert run["flags"], f"{name} parsed no arguments"
        unexplained = [options for options, help_text in run["flags"] if not help_text]
        assert not unexplained, f"{name}: flags without help: {unexplained}"
    for text in ("(default: 5.0)", "--duration-s"):  # the defaults are shown
        assert text in scripts["server.py"]["help"]
