"""memory.trim: free heap pages go back to the kernel (glibc malloc_trim)."""

from __future__ import annotations

from aiguard_sidecar import memory


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_trim_returns_freed_heap_memory_to_the_kernel() -> None:
    # 1 KB blocks come from malloc (not Python's small-object arenas); the last one stays
    # alive so the freed blocks sit below the heap top, where glibc never trims by itself.
    blocks = [bytes(1024) + i.to_bytes(4, "little") for i in range(60_000)]
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    assert memory.trim() is True  # the test machines and the sidecar image run glibc
    after = rss_mb()
    assert before - after > 30, f"RSS {before:.1f} MB -> {after:.1f} MB"
    assert keep.endswith((59_999).to_bytes(4, "little"))
