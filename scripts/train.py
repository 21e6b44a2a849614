"""`python scripts/train.py ...` is `minigpt train ...`."""

import sys

from minigpt.cli import main

main(["train", *sys.argv[1:]])
