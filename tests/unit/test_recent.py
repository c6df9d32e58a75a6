"""The bounded "at most once per hour" memory."""

from __future__ import annotations

from bot.recent import Recent


def test_once_per_time_to_live() -> None:
    now = [0.0]
    recent = Recent(ttl_s=3600, clock=lambda: now[0])
    assert recent.first("alice")
    assert not recent.first("alice")
    now[0] = 3599
    assert not recent.first("alice")
    assert recent.first("bob")
    now[0] = 3601
    assert recent.first("alice")  # an hour after the first: again
    assert not recent.first("bob")


def test_memory_stays_bounded_for_many_senders() -> None:
    now = [0.0]
    recent = Recent(ttl_s=3600, cap=1000, clock=lambda: now[0])
    for i in range(100_000):
        now[0] = i * 0.001
        assert recent.first(f"@user{i}:example.org")
    assert len(recent) <= 1000
