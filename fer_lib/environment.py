"""The machine a run ran on: CPU and its flags, threads, device, package versions. A training time means
little without it (on these CPUs AMX bf16 trains about five times as fast as AVX2 fp32)."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("fer_lib", "torch", "numpy", "h5py", "opencv-python-headless", "optuna", "scikit-learn",
            "matplotlib", "seaborn", "pandas", "papermill", "nbconvert", "nbformat", "nbclient",
            "ipykernel", "nbval", "tqdm")


def cpu_flags() -> tuple[str, set]:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; elsewhere no flags)."""
    cpu, flags = platform.processor(), set()
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return cpu, flags


def native_bf16(flags: set | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX-512 bf16). oneDNN also says yes to bare
    AVX-512 (Ice Lake, Skylake-X), where it emulates bf16: there `vgg` trained 2.5x slower than fp32
    (12.7 against 32.3 faces/s, 2-core Ice Lake, 2026-12-07), so only the hardware counts. flags: cpu_flags()'s,
    when the caller has read them."""
    import torch
    flags = cpu_flags()[1] if flags is None else flags
    if flags:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # no flags to read (not Linux): oneDNN's word


def describe_environment() -> dict:
    """Versions, platform, CPU and device: what a reader needs to redo the run."""
    import torch
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu, flags = cpu_flags()
    cpu_flags_ = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu, "cpu_flags": cpu_flags_,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu",
            "cpu_bf16": native_bf16(flags), "packages": versions}


def describe_machine(m: dict | None) -> str:
    """A run's machine record (train.Setup.machine, a trial's "machine") in a few words:
    '2-core AMD EPYC (avx2, fp32, 2 threads)'; '' for none (records before 2026-12)."""
    if not isinstance(m, dict):
        return ""
    cores = f"{m['cpu_count']}-core " if m.get("cpu_count") else ""
    threads = m["torch_threads"]
    return (f"{cores}{m['cpu']} ({', '.join(m['cpu_flags'][:1]) or 'no AVX2'}, {m['precision']}, "
            f"{threads} thread{'s' * (threads != 1)})")
