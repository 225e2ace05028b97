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
    assert len(reads) == 2 and roomy.total > 0  # the first check (driver + one actor), for the metrics; then RSS decides
    tight = memory.MemoryBound(1, lambda: me)  # 1 MB: RSS is over it, so PSS is read and decides
    reads.clear()
    clock[0] += 1.0
    assert tight.over() and len(reads) == 2 and tight.total > 2**20


def test_the_metrics_read_a_process_s_pss_again_only_when_its_rss_moved_or_the_reading_is_old(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading five processes' PSS every 5 s was half of an idle driver's CPU: an idle process is read
    again after pss_max_age_s, one whose RSS moved at the next look."""
    mb = 2**20
    rss = {1: 900 * mb, 2: 900 * mb, os.getpid(): 300 * mb}
    reads: list[int] = []
    monkeypatch.setattr(memory, "rss_bytes", lambda pid=None: rss[pid or os.getpid()])
    monkeypatch.setattr(memory, "pss_bytes", lambda pid=None: reads.append(pid) or rss[pid or os.getpid()] // 3)
    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    bound = memory.MemoryBound(1 << 20, lambda: {"a": 1, "b": 2}, pss_every_s=5.0, pss_max_age_s=60.0)
    assert not bound.over() and sorted(reads) == sorted(rss) and bound.total == 700 * mb
    reads.clear()
    for _ in range(4):  # 20 s, nothing moved: nothing read
        clock[0] += 5.0
        rss[1] += memory.RSS_MOVE_BYTES // 4  # under the threshold, even summed over the looks
        assert not bound.over()
    assert reads == []
    rss[2] += 100 * mb  # moved: read at the next look, the others not
    clock[0] += 5.0
    assert not bound.over() and reads == [2]
    rss[1] -= 800 * mb  # fell below its last PSS reading: the total never counts more than RSS
    clock[0] += 0.25
    bound.over()
    assert bound.total == rss[1] + 1000 * mb // 3 + 100 * mb
    reads.clear()
    clock[0] += 59.0  # the readings a minute old are taken again, and the moved one; not the one read 59 s ago
    assert not bound.over() and sorted(reads) == [1, os.getpid()]


def test_over_the_limit_by_rss_pss_is_reread_when_rss_grew_into_the_room_or_after_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch processes share most pages, so their RSS sum is over the limit while PSS is far under it:
    PSS is then not read 4x a second (it cost the driver a third of its CPU), but when RSS grew by half
    the room the last reading left, or after pss_over_every_s -- and at every check while over."""
    mb = 2**20
    rss, pss, reads = [1000 * mb], [400 * mb], []
    monkeypatch.setattr(memory, "rss_bytes", lambda pid=None: rss[0])
    monkeypatch.setattr(memory, "pss_bytes", lambda pid=None: reads.append(pid) or pss[0])
    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    bound = memory.MemoryBound(600, dict, pss_over_every_s=1.0)  # only the driver: one reading per check
    assert not bound.over() and len(reads) == 1
    for _ in range(3):  # 0.75 s: RSS steady, 200 MB of room left
        clock[0] += 0.25
        assert not bound.over()
    assert len(reads) == 1
    clock[0] += 0.25  # a second since the reading
    assert not bound.over() and len(reads) == 2
    rss[0] += 101 * mb  # grew by more than half the room: read now
    clock[0] += 0.25
    assert not bound.over() and len(reads) == 3
    pss[0] = 700 * mb
    clock[0] += 1.0
    assert bound.over() and len(reads) == 4
    pss[0] = 500 * mb  # while over, every check reads: it resumes as soon as PSS is back under
    clock[0] += 0.25
    assert not bound.over() and len(reads) == 5
