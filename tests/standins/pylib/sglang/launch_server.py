"""Stand-in for ``python3 -m sglang.launch_server``."""

from _standin import main

main("sglang")
