"""A bounded memory of what happened lately, for "at most once per sender per hour" rules:
entries expire after a time to live, and the oldest go first when it is full."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class Recent:
    def __init__(
        self, ttl_s: float, cap: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self.cap, self.clock = ttl_s, cap, clock
        self._at: OrderedDict[Hashable, float] = OrderedDict()  # oldest mark first

    def first(self, key: Hashable) -> bool:
        """True (and remembered) if `key` was not marked within the time to live."""
        now = self.clock()
        while self._at and (
            len(self._at) >= self.cap or next(iter(self._at.values())) <= now - self.ttl_s
        ):
            self._at.popitem(last=False)
        if key in self._at:
            return False
        self._at[key] = now
        return True

    def __len__(self) -> int:
        return len(self._at)
