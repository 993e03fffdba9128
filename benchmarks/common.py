"""Helpers every benchmark shares: the machine line, row-count arguments and the writer that
puts one subsection of benchmarks/RESULTS.md in place.

    from common import machine, parse_rows, update_section   # scripts run from benchmarks/
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path


def machine(versions: dict[str, str], device: str = "") -> str:
    """'N CPUs (nproc), X GiB RAM, CPU model<device>; Python x, <name> <version>...'."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    mem = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", mem, re.M)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = f"{int(total.group(1)) / 2**20:.1f} GiB RAM" if total else "RAM unknown"
    cpu = model.group(1).strip() if model else platform.processor() or "CPU model unknown"
    libs = ", ".join(f"{name} {version}" for name, version in versions.items())
    py = platform.python_version()
    return f"{cpus} CPUs (nproc), {ram}, {cpu}{device}; Python {py}, {libs}"


def parse_rows(text: str) -> int:
    """'20M', '100m', '1e6', '500k', '3_000_000' -> an int > 0."""
    s = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(s[-1:], 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use e.g. 20M, 1e6 or 500k") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(value)


def rows_label(rows: int) -> str:
    for unit, mult in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if rows % mult == 0:
            return f"{rows // mult}{unit}"
    return str(rows)


def update_section(
    path: Path,
    section: str,
    intro: str,
    heading: str,
    body: str,
    order: Callable[[str], object] = lambda h: h,
) -> None:
    """Put ``body`` under ``heading`` (a ``### `` line) in ``section`` (a ``## `` line, rewritten
    with ``intro``) of the results file, keeping every other subsection and section; written
    atomically."""
    from engine.io import write_bytes_atomic

    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    subs: dict[str, str] = {}
    if start is None:
        before, after = lines, []
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(r"^#{1,2} ", lines[i])),
            len(lines),
        )
        before, after = lines[:start], lines[end:]
        current, acc = None, {}
        for line in lines[start + 1 : end]:
            if line.startswith("### "):
                current = line.strip()
                acc[current] = []
            elif current is not None:
                acc[current].append(line)
        subs = {h: "\n".join(b).strip() for h, b in acc.items()}
    subs[heading] = body.strip()
    parts = ["\n".join(before).rstrip(), intro.rstrip()]
    parts += [f"{h}\n\n{subs[h]}" for h in sorted(subs, key=order)]
    if after:
        parts.append("\n".join(after).strip())
    write_bytes_atomic(path, ("\n\n".join(p for p in parts if p) + "\n").encode())


def ray_version() -> str:
    import ray

    return ray.__version__


def section_rows(text: str, section: str, heading: str) -> list[str]:
    """The table rows already under ``heading`` in ``section`` of a results file (not its
    ``| code |`` header), to keep beside a new row; the same heading may name another
    section's subsection."""
    part = text.split(section, 1)[1].split("\n## ", 1)[0] if section in text else ""
    if heading not in part:
        return []
    sub = part.split(heading, 1)[1].split("\n### ", 1)[0]
    return [ln for ln in sub.splitlines() if ln.startswith("| ") and not ln.startswith("| code |")]
