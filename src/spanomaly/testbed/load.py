"""Open-loop workload: Poisson arrivals that follow a load profile, a mix of user journeys.

Arrivals do not wait for answers (open loop), so a slow system gets the same load a fast
one does, as users would give it. Profiles: ``constant``; ``wave`` (a daily-like cycle,
rate x (1 + 0.5 sin), one period per `period_s`); ``bursts`` (rate x 3 for 5 s every
`period_s`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

JOURNEYS = {"movie": 0.35, "book": 0.3, "search": 0.15, "top": 0.1, "review": 0.1}
PROFILES = ("constant", "wave", "bursts")
MAX_IN_FLIGHT = 1000


def rate_at(profile: str, rate: float, t: float, period_s: float = 120.0) -> float:
    if profile == "wave":
        return rate * (1 + 0.5 * math.sin(2 * math.pi * t / period_s))
    if profile == "bursts":
        return rate * (3.0 if (t % period_s) < 5.0 else 1.0)
    return rate


@dataclass
class LoadStats:
    duration_s: float = 0.0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    by_journey: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self, target_rate: float) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def q(x: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(x * len(lat)))], 1) if lat else None

        achieved = self.sent / self.duration_s if self.duration_s else 0.0
        return {
            "target_rate": target_rate,
            "achieved_rate": round(achieved, 2),
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "by_journey": self.by_journey,
            "latency_ms": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)},
        }


async def _journey(client: Any, base: str, name: str, rng: random.Random) -> int:
    item = rng.randint(1, 300)
    if name == "movie":
        resp = await client.get(f"{base}/movie/{item}")
    elif name == "book":
        resp = await client.get(f"{base}/book/{item}")
    elif name == "search":
        resp = await client.get(f"{base}/search", params={"q": rng.choice(["star", "king", "zz"])})
    elif name == "top":
        resp = await client.get(f"{base}/top")
    else:
        kind = rng.choice(["movie", "book"])
        review = {"kind": kind, "item": item, "stars": rng.randint(1, 5), "text": "fine"}
        resp = await client.post(f"{base}/review", json=review)
    return resp.status_code


async def generate(
    frontends: list[str],
    rate: float,
    duration_s: float,
    profile: str = "constant",
    seed: int = 0,
    stop: asyncio.Event | None = None,
) -> LoadStats:
    """Send requests to the frontends (balanced at random) for `duration_s` seconds."""
    import httpx

    rng = random.Random(seed)
    names, weights = list(JOURNEYS), list(JOURNEYS.values())
    stats = LoadStats()
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:

        async def one(name: str) -> None:
            t0 = time.perf_counter()
            try:
                status = await _journey(client, rng.choice(frontends), name, rng)
            except (httpx.HTTPError, OSError):
                status = 599
            stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if status < 400:
                stats.ok += 1
            else:
                stats.errors += 1

        start = time.perf_counter()
        next_at = 0.0
        while next_at < duration_s and not (stop and stop.is_set()):
            now = time.perf_counter() - start
            if next_at > now:
                await asyncio.sleep(next_at - now)
            name = rng.choices(names, weights)[0]
            if len(pending) >= MAX_IN_FLIGHT:
                stats.dropped += 1
            else:
                stats.sent += 1
                stats.by_journey[name] = stats.by_journey.get(name, 0) + 1
                task = asyncio.create_task(one(name))
                pending.add(task)
                task.add_done_callback(pending.discard)
            next_at += rng.expovariate(max(rate_at(profile, rate, next_at), 1e-6))
        stats.duration_s = min(duration_s, time.perf_counter() - start)
        if pending:
            await asyncio.wait(pending, timeout=12)
        for task in pending:
            task.cancel()
    return stats
