"""Makes ``tests/`` importable (``mt_testing``: the test-only rank workers shared by several test
files); spawned ranks inherit this path."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
