"""The memory bound decides on cheap RSS while it is under the limit (PSS <= RSS), reads PSS when it is not."""

from __future__ import annotations

import os

import pytest

import pipelines.memory as memory


def test_pss_is_read_only_when_rss_is_over_the_limit_or_for_the_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = memory.pss_bytes

    def counted(pid: int | None = None) -> int:
        reads.append(pid or 0)
        return real(pid)

    monkeypatch.setattr(memory, "pss_bytes", counted)
    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    me = {"self-again": os.getpid()}
    roomy = memory.MemoryBound(1 << 20, lambda: me, pss_every_s=5.0)  # a 1 TB limit
    for _ in range(8):  # 2 s of checks
        assert not roomy.over()
        clock[0] += 0.25
    assert len(reads) == 2  # the first check (driver + one actor), for the metrics; then RSS decides
    clock[0] += 5.0
    roomy.over()
    assert len(reads) == 4 and roomy.total > 0
    tight = memory.MemoryBound(1, lambda: me)  # 1 MB: RSS is over it, so PSS is read and decides
    reads.clear()
    clock[0] += 1.0
    assert tight.over() and len(reads) == 2 and tight.total > 2**20
