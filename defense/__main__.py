"""Entry point for ``python -m defense``."""
import sys

from defense.cli import main

sys.exit(main())
