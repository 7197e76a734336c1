"""Speed and strength benchmarks: each a script (`python bench/NAME.py --help`) printing figures measured side by side.

Run as a script, a file's own folder comes first on the import path, so no file here may be named
like a module the scripts import (bench/attacks.py once hid the attacks package). Scripts share code
as the installed package's modules (`from bench.targets import ...`, after `pip install -e .`), and
tests import them as `bench.NAME` (tests/test_bench_scripts.py checks both).
"""
