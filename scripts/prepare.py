"""Tokenize a corpus into a data folder: same as `minigpt prepare ...`."""

import sys

from minigpt.cli import main

if __name__ == "__main__":
    main(["prepare", *sys.argv[1:]])
