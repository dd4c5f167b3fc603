"""What every harness under ``benchmarks/`` shares (and the tests reuse).

``ports``: free ports below the ephemeral range; ``backend``: the stand-in OpenAI
backend the harnesses put behind the proxies; ``processes``: starting a command in
its own process group with a log, and stopping it.
"""
