"""The compilation target: host CPU detection, overrides, thread count.

TVM 0.27 takes dict targets only (`{"kind": "llvm", "mcpu": "znver4"}`); "native" as an
mcpu silently falls back to a generic CPU, so the host is detected here from
/proc/cpuinfo instead:

    AMD family 25 with AVX-512 (Zen 4)  -> znver4      AMD family 26 (Zen 5) -> znver5
    other CPUs with AVX-512             -> skylake-avx512
    AVX2 and FMA                        -> haswell
    anything else                       -> plain llvm (generic x86-64 or the host's ISA)

`get_target(spec)` accepts None (the host), "llvm" (the host), an mcpu name
("znver4", "haswell"), an "llvm -mcpu=X" string, a dict, or a tvm Target.
"""

from __future__ import annotations

import functools
import os
import re

from einfuse.errors import EinfuseError

# Threads for TVM's runtime pool. TVM reads TVM_NUM_THREADS when the pool starts (on the
# first parallel launch) and otherwise guesses half the hardware threads: 1 on this
# 2-core machine. Set it before any kernel runs.
_THREADS_ENV = "TVM_NUM_THREADS"


def num_threads() -> int:
    """Worker threads kernels use: EINFUSE_NUM_THREADS, else TVM_NUM_THREADS, else the CPUs
    this process may run on."""
    for var in ("EINFUSE_NUM_THREADS", _THREADS_ENV):
        v = os.environ.get(var, "")
        if v.strip().isdigit() and int(v) > 0:
            return int(v)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads() -> int:
    """Makes TVM's thread pool use num_threads() workers (idempotent); returns the count."""
    n = num_threads()
    os.environ.setdefault(_THREADS_ENV, str(n))
    return int(os.environ[_THREADS_ENV])


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Vendor, family, model name and ISA flags of the first CPU in /proc/cpuinfo."""
    info = {"vendor": "", "family": -1, "model_name": "", "flags": frozenset()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    for line in first.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu family" and value.isdigit():
            info["family"] = int(value)
        elif key == "model name":
            info["model_name"] = value
        elif key == "flags":
            info["flags"] = frozenset(value.split())
    return info


def host_mcpu(info: dict | None = None) -> str | None:
    """The LLVM -mcpu for the host (None: generic)."""
    info = info or cpu_info()
    flags = info["flags"]
    avx512 = "avx512f" in flags
    if info["vendor"] == "AuthenticAMD":
        # Family 25 (0x19) is Zen 3 and Zen 4; only Zen 4 has AVX-512.
        if info["family"] == 26:
            return "znver5"
        if info["family"] == 25:
            return "znver4" if avx512 else "znver3"
    if avx512:
        return "skylake-avx512"
    if "avx2" in flags and "fma" in flags:
        return "haswell"
    return None


def host_target_dict() -> dict:
    mcpu = host_mcpu()
    return {"kind": "llvm", "mcpu": mcpu} if mcpu else {"kind": "llvm"}


_MCPU = re.compile(r"^[A-Za-z0-9_.\-]+$")


def target_dict(spec=None) -> dict:
    """The target as a plain dict (see the module docstring for what `spec` may be)."""
    if spec is None:
        return host_target_dict()
    if isinstance(spec, dict):
        if spec.get("kind", "llvm") != "llvm":
            raise EinfuseError(f"the TVM backend compiles for CPUs (kind llvm), not {spec.get('kind')!r}")
        out = {"kind": "llvm", **spec}
        if out.get("mcpu") in ("native", "host"):
            out.update(host_target_dict())
        return out
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("", "llvm", "native", "host", "cpu"):
            return host_target_dict()
        parts = text.split()
        if parts[0] == "llvm":
            out = {"kind": "llvm"}
            for p in parts[1:]:
                key, _, value = p.lstrip("-").partition("=")
                if key == "mcpu" and value:
                    out["mcpu"] = value
                elif key == "mtriple" and value:
                    out["mtriple"] = value
                else:
                    raise EinfuseError(f"unsupported target option {p!r} in {spec!r}")
            if out.get("mcpu") in ("native", "host"):
                out.update(host_target_dict())
            return out
        if _MCPU.fullmatch(text):
            return {"kind": "llvm", "mcpu": text}
        raise EinfuseError(f"bad target {spec!r}: expected 'llvm', an mcpu name such as 'znver4', or a dict")
    # A tvm Target already.
    export = getattr(spec, "export", None)
    if callable(export):
        d = dict(export())
        out = {"kind": "llvm"}
        if d.get("mcpu"):
            out["mcpu"] = str(d["mcpu"])
        return out
    raise EinfuseError(f"bad target {spec!r}")


def get_target(spec=None):
    """A tvm.target.Target for `spec` (None / "llvm": the detected host CPU)."""
    import tvm

    d = target_dict(spec)
    try:
        return tvm.target.Target(d)
    except Exception as e:  # noqa: BLE001 - an unknown mcpu or key
        raise EinfuseError(f"bad target {d}: {e}") from None


def target_key(target) -> str:
    """A short stable text for a target, for cache keys and kernel names."""
    d = target_dict(target)
    return ",".join(f"{k}={d[k]}" for k in sorted(d))


def vector_lanes(target, dtype_bits: int = 32) -> int:
    """SIMD lanes for `dtype_bits`-wide elements on `target` (AVX-512: 16 f32)."""
    mcpu = target_dict(target).get("mcpu", "")
    if mcpu in ("znver4", "znver5", "skylake-avx512", "cascadelake", "icelake-server", "sapphirerapids"):
        width = 512
    elif mcpu in ("haswell", "znver1", "znver2", "znver3", "skylake", "broadwell"):
        width = 256
    else:
        width = 128
    return max(1, width // max(dtype_bits, 8))
