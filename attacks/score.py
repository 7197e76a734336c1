"""``python attacks/score.py``: the scorer's command (:mod:`attacks.scoring.cli`; also the ``avc-score`` script)."""
from attacks.scoring.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
