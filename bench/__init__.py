"""Speed and strength benchmarks, each a script (`python bench/NAME.py --help`) that prints figures measured side by side."""
