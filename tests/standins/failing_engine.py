"""A stand-in engine that fails the way real engines fail: ``python failing_engine.py MODE``.

Modes (each a real process doing the thing; the babysitter runs it with ``--engine command``):

- ``gpu-oom``    prints the traceback PyTorch prints when CUDA runs out of memory, exits 1
- ``cuda-error`` prints a CUDA error as vLLM's workers do, exits 1
- ``exit CODE``  prints a line to stderr and exits with CODE
- ``allocate``   allocates memory until the kernel's OOM killer ends it (run it in a
                 memory-limited cgroup)
- ``sleep``      prints to stderr and sleeps: never ready
- ``chatty N``   prints N lines of 100 characters to stdout and to stderr, then sleeps
"""

from __future__ import annotations

import sys
import time

GPU_OOM = """Traceback (most recent call last):
  File "/usr/lib/python3/site-packages/vllm/worker/worker.py", line 180, in determine_num_blocks
    self.model_runner.profile_run()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.11 GiB of which 1.19 GiB is free. Of the allocated memory 76.52 GiB is allocated \
by PyTorch."""

CUDA_ERROR = """Traceback (most recent call last):
  File "/usr/lib/python3/site-packages/vllm/worker/model_runner.py", line 1650, in execute_model
    output = self.model.sample(logits=logits)
RuntimeError: CUDA error: an illegal memory access was encountered
CUDA kernel errors might be asynchronously reported at some other API call."""


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "exit"
    print(f"stand-in engine: {mode}", flush=True)  # stdout, to the log only
    if mode == "gpu-oom":
        print("INFO loading weights", file=sys.stderr)
        print(GPU_OOM, file=sys.stderr)
        return 1
    if mode == "cuda-error":
        print(CUDA_ERROR, file=sys.stderr)
        return 1
    if mode == "exit":
        code = int(argv[1]) if len(argv) > 1 else 1
        print(f"stand-in engine: giving up with {code}", file=sys.stderr)
        return code
    if mode == "allocate":
        print("allocating until the OOM killer comes", file=sys.stderr, flush=True)
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))  # touched: really resident
    if mode == "chatty":
        for i in range(int(argv[1])):
            print(f"out {i:06d} " + "o" * 89, flush=True)
            print(f"err {i:06d} " + "e" * 89, file=sys.stderr, flush=True)
        time.sleep(60)
        return 0
    if mode == "sleep":
        for i in range(600):
            print(f"still loading {i}", file=sys.stderr, flush=True)
            time.sleep(0.1)
        return 0
    print(f"usage: failing_engine.py MODE (unknown mode {mode})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
