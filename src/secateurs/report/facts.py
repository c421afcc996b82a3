"""The facts a run reports: library versions, the machine, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata

import torch


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("secateurs", "torch", "transformers", "safetensors", "gguf", "datasets", "lm_eval"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


# The instruction sets that decide which kernels a CPU runs (float32 AVX2 or AVX-512, bfloat16 units): two hosts
# with the same model name can differ in them, and their timings with it.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")
# Which core it is: x86 and ARM name it with different /proc/cpuinfo fields (each has only its own).
GENERATION_FIELDS = ("cpu family", "model", "stepping", "CPU implementer", "CPU part", "CPU variant", "CPU revision")


def machine() -> dict[str, object]:
    cpuinfo = _cpuinfo()
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu": cpuinfo.get("model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if cpuinfo:
        info.update(cpu_detail(cpuinfo))
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def cpu_detail(cpuinfo: dict[str, str]) -> dict[str, object]:
    """The CPU's generation and its ``CPU_FEATURES``, from /proc/cpuinfo's fields: virtual machines often
    report a bare "AMD EPYC", whatever the generation beneath. x86 names it by family, model and stepping;
    ARM has no model name and names its core by implementer and part (0x41 0xd0c: Arm Neoverse N1)."""
    generation = [f"{key} {cpuinfo[key]}" for key in GENERATION_FIELDS if key in cpuinfo]
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())  # x86 / ARM
    return {"cpu_id": ", ".join(generation), "cpu_features": [name for name in CPU_FEATURES if name in flags]}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def peak_cuda_mib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
