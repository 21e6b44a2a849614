"""`python scripts/sample.py ...` is `minigpt sample ...`."""

import sys

from minigpt.cli import main

main(["sample", *sys.argv[1:]])
