"""`python scripts/bench.py ...` is `minigpt bench ...`."""

import sys

from minigpt.cli import main

main(["bench", *sys.argv[1:]])
