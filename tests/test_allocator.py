"""configure_allocator: one line, never raises, stops page churn on glibc, leaves the user's choice alone.

The allocator is process state, so the real calls run in fresh subprocesses (sys.executable)
with a clean environment; the pure logic runs here with fake libc functions.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlearn import allocator

BLOCK = 64 << 20  # bytes
LOOPS = 24
LAST = 10  # the loops checked for steady state
PAGES = BLOCK // 4096
RAW_BLOCK = 96 << 20  # more than tlearn's top pad (64 MiB), which a trim would keep
RAW_LOOPS = 12
RAW_PAGES = RAW_BLOCK // 4096

# Allocate, touch and free a 96 MiB block RAW_LOOPS times with libc's malloc alone (the block
# is the heap's top: trimming would show here), then a 64 MiB torch tensor LOOPS times; report
# the minor faults of each loop.
FAULT_LOOP = f"""
import ctypes, json, resource, sys
described = None
if sys.argv[1] == "configure":
    from tlearn.allocator import configure_allocator
    described = configure_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
raw = []
for _ in range({RAW_LOOPS}):
    before = faults()
    block = libc.malloc({RAW_BLOCK})
    ctypes.memset(block, 1, {RAW_BLOCK})
    libc.free(block)
    raw.append(faults() - before)
import torch
torch.ones(8)  # let torch set itself up before counting
tensor = []
for _ in range({LOOPS}):
    before = faults()
    block = torch.empty({BLOCK // 4}, dtype=torch.float32)
    block.fill_(1.0)  # touch every page
    del block
    tensor.append(faults() - before)
print(json.dumps({{"faults": tensor, "raw": raw, "described": described}}))
"""

def glibc_linux() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


needs_glibc = pytest.mark.skipif(not glibc_linux(), reason="glibc malloc on Linux only")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD"))}
    env.update(extra)
    return env


def run_python(code: str, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def fault_loop(mode: str, **extra) -> dict:
    return json.loads(run_python(FAULT_LOOP, mode, env=clean_env(**extra)))


def describe(**extra) -> str:
    """configure_allocator's line in a fresh process (without importing torch)."""
    code = "from tlearn.allocator import configure_allocator; print(configure_allocator())"
    return run_python(code, env=clean_env(**extra))


def test_returns_one_line_and_is_idempotent():
    code = ("from tlearn.allocator import configure_allocator\n"
            "first = configure_allocator(); second = configure_allocator()\n"
            "assert isinstance(first, str) and first == second, (first, second)\n"
            "import json; print(json.dumps(first))")
    line = json.loads(run_python(code, env=clean_env()))
    assert line.startswith("allocator: ") and "\n" not in line
    if glibc_linux():
        assert "mallopt" in line and "mmap threshold" in line and "refused" not in line, line
    else:
        assert "unchanged" in line, line


def steady(run: dict) -> int:
    """Minor faults of the last LAST loops."""
    return sum(run["faults"][-LAST:])


@needs_glibc
def test_stops_page_churn_of_large_tensors():
    plain = fault_loop("plain")
    configured = fault_loop("configure")
    if steady(plain) < LAST * PAGES // 2:
        pytest.skip(f"glibc's defaults do not churn here ({plain['faults']}): nothing to show")
    assert "mallopt" in configured["described"], configured
    # plain: every loop maps fresh zeroed pages (PAGES faults each). Configured: the first loops
    # take fresh heap (glibc's tcache pins up to ~8 freed blocks: measured 4-9), then every block
    # is reused without a fault.
    assert steady(configured) < PAGES // 4, (plain, configured)
    assert sum(configured["faults"]) < sum(plain["faults"]) / 2, (plain, configured)
    # malloc alone: one block of fresh pages, then none (not trimmed off the heap's top either)
    assert sum(plain["raw"][-6:]) > 6 * RAW_PAGES // 2, plain
    assert sum(configured["raw"][-6:]) < RAW_PAGES // 4, configured


@needs_glibc
def test_leaves_a_users_malloc_settings_alone():
    # the user asks for mmap from 128 KiB up: the 64 MiB blocks must keep churning
    chosen = fault_loop("configure", MALLOC_MMAP_THRESHOLD_="131072")
    assert "unchanged" in chosen["described"] and "MALLOC_MMAP_THRESHOLD_" in chosen["described"], chosen
    assert steady(chosen) > LAST * PAGES // 2, chosen
    tuned = describe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert "unchanged" in tuned and "glibc.malloc.trim_threshold" in tuned, tuned


def jemalloc_library() -> Path | None:
    return next((p for p in (Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                             Path("/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"),
                             Path("/usr/lib64/libjemalloc.so.2")) if p.exists()), None)


@pytest.mark.skipif(not glibc_linux() or jemalloc_library() is None, reason="needs libjemalloc.so.2 on Linux")
def test_preloaded_jemalloc_keeps_freed_pages():
    preload = str(jemalloc_library())
    plain = fault_loop("plain", LD_PRELOAD=preload)
    configured = fault_loop("configure", LD_PRELOAD=preload)
    assert configured["described"] == "allocator: jemalloc (preloaded), mallctl (dirty decay never)", configured
    if steady(plain) < LAST * PAGES // 2:
        pytest.skip(f"this jemalloc does not churn with its defaults ({plain['faults']}): nothing to show")
    assert steady(configured) < PAGES // 4, (plain, configured)
    chosen = describe(LD_PRELOAD=preload, MALLOC_CONF="dirty_decay_ms:0")
    assert chosen == "allocator: jemalloc (preloaded), unchanged (dirty_decay_ms set by the user in MALLOC_CONF)"


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_unchanged(platform):
    assert allocator._configure({}, platform) == f"allocator: unchanged (not Linux: {platform})"


def test_never_raises(monkeypatch):
    def broken(environ, platform):
        raise OSError("no libc here")

    monkeypatch.setattr(allocator, "_configure", broken)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.configure_allocator() == "allocator: unchanged (OSError: no libc here)"


def fake_mallopt(refuse=()):
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 0 if param in refuse else 1

    return mallopt, calls


def test_mallopt_values():
    mallopt, calls = fake_mallopt()
    assert allocator.apply_mallopt(mallopt) == "mmap threshold 2 GiB, trim threshold never, top pad 64 MiB"
    assert calls == [(-3, 2**31 - 1), (-1, -1), (-2, 64 << 20)]
    assert all(-2**31 <= value < 2**31 for _, value in calls)  # mallopt's value is a C int


def test_refused_mmap_threshold_falls_back_to_mmap_max_0():
    mallopt, calls = fake_mallopt(refuse={allocator.M_MMAP_THRESHOLD})
    described = allocator.apply_mallopt(mallopt)
    assert (allocator.M_MMAP_MAX, 0) in calls
    assert described.startswith("mmap threshold 2 GiB refused, mmap max 0"), described


def test_user_settings():
    assert allocator.user_settings({}) == []
    assert allocator.user_settings({"MALLOC_ARENA_MAX": "2"}) == []  # does not conflict
    assert allocator.user_settings({"MALLOC_TOP_PAD_": "0", "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) == [
        "MALLOC_TOP_PAD_", "glibc.malloc.mmap_max"]
