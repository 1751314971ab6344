"""Limits the app enforces, and the instance's memory they are sized from. Nothing here imports a library."""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageLimits:
    """max_bytes: encoded size; max_pixels: width x height from the header; min_side: shortest side, pixels."""

    max_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8


def instance_memory_bytes() -> int | None:
    """Memory this process may use: the cgroup limit (v2 or v1) when set, else physical memory; None if unknown."""
    candidates: list[int] = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 reports "no limit" as a huge number, v2 as "max"
            candidates.append(int(raw))
    with suppress(ValueError, OSError, AttributeError):
        candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(candidates) if candidates else None


def default_decode_budget_bytes() -> int:
    """A quarter of the instance's memory, at most 512 MiB (256 MiB when the memory is unknown).

    The cap keeps a 2 GB Flex Consumption instance safe even where the instance size is not visible as a
    cgroup limit; 512 MiB still decodes the largest accepted image (50 Mpx RGBA, about 400 MB) alone."""
    memory = instance_memory_bytes()
    if memory is None:
        return 256 << 20
    return max(64 << 20, min(memory // 4, 512 << 20))
