"""What every benchmark script shares: the device description, the machine load, and the
results file each run appends a dated section to."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def device_name() -> str:
    """The accelerator kind and count, or the CPU model and cores."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            names = [ln for ln in cpuinfo.read_text().splitlines() if "model name" in ln]
            cpu = names[0].split(":", 1)[1].strip() if names else cpu
        cores = len(os.sched_getaffinity(0))
        return f"CPU: {cpu} ({jax.local_device_count()} jax device, {cores} cores)"
    return f"{jax.device_count()} x {device.device_kind}"


def load_average() -> str:
    """`uptime`'s load averages (a shared machine makes timings noisy; say how noisy)."""
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return out.split("load average:")[-1].strip() if "load average:" in out else "unknown"


def append_results(lines: list[str]) -> None:
    """Appends a markdown section to benchmarks/RESULTS.md (created on first use)."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by the scripts in benchmarks/; newest last.\n"
        )
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")
