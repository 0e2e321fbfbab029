import time


class TokenBucket:
    """Allows `rate` events a second on average, and bursts of up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def take(self):
        """Spend one token if there is one; False means the caller is over the rate."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
