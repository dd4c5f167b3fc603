"""Stand-in for ``python3 -m infinilm.server``."""

from _standin import main

main("infinilm")
