"""Keep freed memory in the process: stop glibc unmapping and re-faulting activations every step.

Why. glibc's malloc serves every block of 32 MiB or more (and, until its dynamic threshold
has grown, every block of 128 KiB or more) with its own mmap, and gives it back with munmap
on free. A training step of EfficientNet-Lite0 (batch 32, 224 px) allocates activations of
up to 154 MiB each and frees them all by the step's end, so each step the kernel maps, zeroes
and faults in some 3 GiB of fresh pages (800 thousand minor faults), then unmaps them again;
an eval pass (batch 64) likewise. jemalloc with its defaults is worse: it purges blocks of
8 MiB or more at once (its "oversize" arena).

Measured (benchmarks/allocator.py: timm tf_efficientnet_lite0, channels_last, fp32, random
batches; fresh process per run, configurations interleaved, medians; glibc 2.36, torch 2.14
CPU, 2 cores shared with other jobs at a load average of 5-7, so img/s is noisy and only the
ratios within a round mean much; faults and system time are steady):

    3 rounds, 3 steps after 2 warm-up     img/s  (vs default)  minor faults  sys s  peak RSS
    train  glibc defaults                  3.21                   2,406,374   4.16  3462 MiB
    (AdamW, tlearn: mallopt below          4.78   x1.49              7,056   0.01  3758 MiB
    batch  MALLOC_* env (the issue's)      5.08   x1.59                  0   0.01  3824 MiB
    32)    jemalloc preloaded, defaults    2.48   x0.77          4,060,294   7.00  3289 MiB
           jemalloc preloaded + tlearn     3.86   x1.20                292   0.02  3459 MiB
           tcmalloc preloaded              5.38   x1.68              8,274   0.05  3312 MiB
    eval   glibc defaults                 11.24                  2,267,106   4.10  1661 MiB
    (batch tlearn: mallopt below          19.16   x1.71                  0   0.01  1950 MiB
    64)    MALLOC_* env (the issue's)     18.62   x1.66                  0   0.00  1951 MiB
           jemalloc preloaded, defaults   10.28   x0.91          3,005,315   5.38  1612 MiB
           jemalloc preloaded + tlearn    23.43   x2.08                  2   0.01  1770 MiB
           tcmalloc preloaded             20.93   x1.86              1,602   0.01  2028 MiB

    A second run, glibc defaults vs tlearn only, 5 rounds: train 4.19 -> 4.77 img/s (x1.14,
    per round x1.08-x1.46), faults 1,046,036 -> 6,256, sys 1.64 -> 0.01 s, peak 3441 -> 3641
    MiB; eval 12.35 -> 23.58 img/s (x1.91, per round x1.59-x1.99), faults 2,317,784 -> 0,
    sys 4.07 -> 0.00 s, peak 1661 -> 1950 MiB. (On the issue's quieter measurement the same
    change was 14 -> 24.7 img/s.)

Fixed here. `configure_allocator()`, called once at process start, tells glibc through
`mallopt` (ctypes, no environment variable, no re-exec):

  * M_MMAP_THRESHOLD = 2 GiB - 1 (the largest an `int` holds): blocks below it come from the
    heap (brk), whose freed chunks the next step reuses without a page fault; a block above
    it (rare: one 2 GiB tensor) is still mmapped and given back on free. 4 GiB cannot be
    passed: mallopt takes an int (2**32 would wrap to 0: mmap everything). mallopt(3) says
    the threshold is capped at 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); glibc 2.36
    returns 1 for 2 GiB - 1 and honours it (mallinfo2: a 64 MiB block then comes from the
    heap). 32 MiB would not do: most of Lite0's activations are larger (measured: 418,600
    faults, 0.74 s sys, no faster than the defaults). Where a glibc refuses the threshold
    (mallopt returns 0), M_MMAP_MAX = 0 (no mmapped blocks at all) is set instead: measured
    29,107 faults, 0.12 s sys, about the same as the threshold.
  * M_TRIM_THRESHOLD = -1: never give the heap's free top back with brk ("-1 disables
    trimming completely", mallopt(3); glibc reads it as SIZE_MAX). Without it (threshold
    alone) the top is trimmed and re-faulted: 611,964 faults, 1.10 s sys. A finite value
    has to exceed what a step frees at the top, which grows with batch and image size; 2 GiB
    - 1 (the int limit) happened to be enough here (883 faults) but would not be for a
    larger step, so: never.
  * M_TOP_PAD = 64 MiB: grow the heap in larger pieces (fewer brk calls; glibc's 128 KiB
    measured 37,106 faults, 0.17 s sys). Address space only: untouched pages cost no memory.
  * M_ARENA_MAX is left alone: the training, evaluation and prediction loops allocate their
    big blocks on the main thread (CPU autograd runs the backward on the calling thread), and
    DataLoader workers are processes, which inherit these settings through fork (not under
    the spawn/forkserver start methods; their per-sample blocks are small anyway).

jemalloc, when it is the process's malloc (LD_PRELOAD), is told through `mallctl` to keep
dirty pages (arenas.dirty_decay_ms and every existing arena's = -1; its oversize arena, made
on first use, then keeps them too): table above. tcmalloc and mimalloc keep freed memory
already and are left alone.

What it costs. Freed memory stays resident: the process keeps its high-water mark instead
of dropping back between steps, as jemalloc, tcmalloc and PyTorch's own CUDA caching
allocator do. Peak RSS grows a little (table: +6-9% training, +17% eval, about one of the
largest activations) because glibc cannot always reuse a freed block in place: its
per-thread cache (tcache) holds the small chunks next to a freed block, so up to ~8 blocks
of one size are taken fresh before reuse starts (a loop of 64 MiB tensors settles after 4-9
fresh blocks). RSS then stays flat from step to step. That is the right trade for a
process that trains, evaluates or predicts and exits; a long-lived host process that
imports tlearn as a library decides for itself (nothing here runs on import).

Left unchanged, and said so in the returned line:
  * not Linux (macOS, Windows): their allocators are not glibc's;
  * malloc is not glibc's and not jemalloc: musl, tcmalloc, mimalloc;
  * the user set any of MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_,
    MALLOC_MMAP_MAX_ or the matching glibc.malloc.* GLIBC_TUNABLES (jemalloc: dirty_decay_ms,
    muzzy_decay_ms or oversize_threshold in MALLOC_CONF): their choice stands. This is also
    how to opt out, e.g. MALLOC_TOP_PAD_=131072 (glibc's default value).
"""
from __future__ import annotations

import ctypes
import os
import sys

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

MIB = 1 << 20
INT_MAX = (1 << 31) - 1
MMAP_THRESHOLD = INT_MAX  # bytes; mallopt's value is an int
TRIM_THRESHOLD = -1  # read by glibc as SIZE_MAX: never trim
TOP_PAD = 64 * MIB

USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
                 "glibc.malloc.mmap_max")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
JEMALLOC_KEYS = ("dirty_decay_ms", "muzzy_decay_ms", "oversize_threshold")

_applied: str | None = None


def configure_allocator() -> str:
    """Tune the C allocator for training/evaluation/prediction; return one line saying what it did.

    Safe to call at process start, before PyTorch allocates much; a second call returns the
    first call's line and changes nothing. Never raises: any failure leaves the allocator
    unchanged and says why.
    """
    global _applied
    if _applied is None:
        try:
            _applied = _configure(os.environ, sys.platform)
        except Exception as error:  # noqa: BLE001 - a start-up nicety must never stop a run
            _applied = f"allocator: unchanged ({type(error).__name__}: {error})"
    return _applied


def _configure(environ, platform: str) -> str:
    if not platform.startswith("linux"):
        return f"allocator: unchanged (not Linux: {platform})"
    libc = ctypes.CDLL(None)
    provider = malloc_provider(libc, environ)
    for name in OTHER_ALLOCATORS:
        if name in provider:
            how = "preloaded" if name in environ.get("LD_PRELOAD", "") else "linked"
            if name == "jemalloc":
                return f"allocator: jemalloc ({how}), {configure_jemalloc(libc, environ)}"
            return f"allocator: {name} ({how}), unchanged"
    if not hasattr(libc, "gnu_get_libc_version"):
        return f"allocator: unchanged (not glibc: malloc from {provider or 'an unknown library'})"
    if provider and "libc" not in provider:
        return f"allocator: unchanged (malloc from {provider}, not glibc)"
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    user = user_settings(environ)
    if user:
        return f"allocator: glibc {version}, unchanged ({', '.join(user)} set by the user)"
    return f"allocator: glibc {version} mallopt ({apply_mallopt(libc.mallopt)})"


def malloc_provider(libc, environ) -> str:
    """Base name of the shared object whose `malloc` this process calls ('' if unknown)."""
    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    dladdr = getattr(libc, "dladdr", None)
    if dladdr is None:  # glibc before 2.34 keeps it in libdl
        try:
            dladdr = ctypes.CDLL("libdl.so.2").dladdr
        except OSError:
            return _provider_from_preload(environ.get("LD_PRELOAD", ""))
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    dladdr.restype = ctypes.c_int
    info = DlInfo()
    address = ctypes.cast(libc.malloc, ctypes.c_void_p).value
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return _provider_from_preload(environ.get("LD_PRELOAD", ""))
    return os.path.basename(info.dli_fname.decode(errors="replace"))


def _provider_from_preload(preload: str) -> str:
    for name in OTHER_ALLOCATORS:
        if name in preload:
            return name
    return ""


def user_settings(environ) -> list[str]:
    """The glibc malloc settings the user chose through the environment."""
    found = [name for name in USER_ENV if name in environ]
    tunables = environ.get("GLIBC_TUNABLES", "")
    found += [name for name in USER_TUNABLES if name + "=" in tunables]
    return found


def apply_mallopt(mallopt) -> str:
    """Set the thresholds through `mallopt(int, int) -> int`; describe what took."""
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = []
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        done.append(f"mmap threshold {_size(MMAP_THRESHOLD)}")
    elif mallopt(M_MMAP_MAX, 0) == 1:
        done.append(f"mmap threshold {_size(MMAP_THRESHOLD)} refused, mmap max 0")
    else:
        done.append("mmap threshold and mmap max refused")
    done.append("trim threshold never" if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                else "trim threshold refused")
    done.append(f"top pad {_size(TOP_PAD)}" if mallopt(M_TOP_PAD, TOP_PAD) == 1 else "top pad refused")
    return ", ".join(done)


def configure_jemalloc(libc, environ) -> str:
    """jemalloc purges freed pages itself: stop it (dirty decay never) unless the user chose."""
    chosen = [key for key in JEMALLOC_KEYS
              if any(key + ":" in environ.get(var, "") for var in ("MALLOC_CONF", "_RJEM_MALLOC_CONF"))]
    if chosen:
        return f"unchanged ({', '.join(chosen)} set by the user in MALLOC_CONF)"
    mallctl = getattr(libc, "mallctl", None)
    if mallctl is None:
        return "unchanged (no mallctl)"
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    never = ctypes.c_ssize_t(-1)

    def write(name: str) -> bool:
        return mallctl(name.encode(), None, None, ctypes.byref(never), ctypes.sizeof(never)) == 0

    # arenas made from now on (jemalloc makes its arena for blocks >= 8 MiB on first use, and
    # forces that arena's decay to 0 only when the default is > 0), then those that exist
    if not write("arenas.dirty_decay_ms"):
        return "unchanged (mallctl arenas.dirty_decay_ms refused)"
    count = ctypes.c_uint(0)
    size = ctypes.c_size_t(ctypes.sizeof(count))
    if mallctl(b"arenas.narenas", ctypes.byref(count), ctypes.byref(size), None, 0) == 0:
        for index in range(count.value):
            write(f"arena.{index}.dirty_decay_ms")  # fails for arenas not made yet: they get the default
    return "mallctl (dirty decay never)"


def _size(n: int) -> str:
    if n >= INT_MAX:
        return "2 GiB"
    return f"{n // MIB} MiB" if n < 1 << 30 else f"{n / (1 << 30):g} GiB"
