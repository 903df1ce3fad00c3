"""Run every benchmark side by side on this machine and write benchmarks/RESULTS.md + JSON.

Each benchmark script prints its own table (targets beside measured values) and writes
benchmarks/out/<name>.json; this collects them with a description of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["compile_bench", "agent_bench", "field_loop_bench", "explain_bench", "parity_bench",
              "fleet_bench", "console_bench", "rollout_bench", "rollout_faults", "scale_bench"]


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f" {f}" in text)
    except OSError:
        pass
    import psutil

    return {"cpu": cpu, "cores": str(os.cpu_count()), "flags": flags,
            "memory_gb": f"{psutil.virtual_memory().total / 2**30:.1f}", "python": platform.python_version(),
            "os": platform.platform()}


def main() -> int:
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    only = set(sys.argv[1:])
    sections, summary, failed = [], {}, []
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        script = HERE / f"{name}.py"
        if not script.exists():
            sections.append(f"## {name}\n\nnot present\n")
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        elapsed = time.time() - t0
        print(proc.stdout[-6000:], flush=True)
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stderr[-3000:], file=sys.stderr)
        json_path = out_dir / f"{name}.json"
        data = json.loads(json_path.read_text()) if json_path.exists() else None
        summary[name] = {"exit_code": proc.returncode, "seconds": round(elapsed, 1), "results": data}
        sections.append(f"## {name}\n\nexit code {proc.returncode}, {elapsed:.0f} s; JSON: "
                        f"`benchmarks/out/{name}.json`\n\n```\n{proc.stdout.strip()[-8000:]}\n```\n")
    m = machine()
    header = ("# Benchmark results\n\nWritten by `make bench` (benchmarks/run_all.py) on "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
              "| machine | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in m.items()) + "\n"
              "Each table shows the target beside the measured value; ratios are measured side by side "
              "in one run.\n\n")
    (HERE / "RESULTS.md").write_text(header + "\n".join(sections))
    (out_dir / "all.json").write_text(json.dumps({"machine": m, "benchmarks": summary}, indent=2))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
