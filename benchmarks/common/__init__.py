"""What every harness under ``benchmarks/`` shares (and the tests reuse).

``ports``: free ports below the ephemeral range (``tests/procs.py`` hands out the
same); ``backend``: the stand-in OpenAI backend the harnesses put behind the
proxies (fixed answers, paced streams, one port or a thousand); ``processes``:
a command in its own process group with a log, and stopping it; ``procfs``: CPU,
memory and descriptors of a process tree, and the machine, from ``/proc``.

The load itself is ``llmsvc.bench.schedule.drive`` (``llmsvc bench``'s loop). An
entry point run as a script (``python benchmarks/harness``) puts the repository
root on ``sys.path`` first, so that ``benchmarks.*`` imports work from anywhere.
"""
