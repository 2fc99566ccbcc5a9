"""Planted root-cause cases of metrics alone, in the wide layout of the public benchmarks:
`normal.csv` and `anomalous.csv` (one column per `<service>_<metric>`, one row per
second), recorded a day apart, so every service's levels differ between the two a little;
in the anomalous one, one service hogs a CPU or leaks memory, and the latency of the
services that call it grows (a symptom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SERVICES = [f"svc-{c}" for c in "abcdefgh"]
FRONT = SERVICES[:3]  # the services whose latency is measured (they call the others)
T0 = 1_700_000_000
GAP_S = 86_400


def _series(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    out = {}
    for s in SERVICES:
        out[f"{s}_cpu"] = rng.uniform(0.5, 5.0) * (1 + 0.1 * rng.standard_normal(n))
        out[f"{s}_mem"] = rng.uniform(1e8, 5e8) * (1 + 0.002 * rng.standard_normal(n))
    for s in FRONT:
        out[f"{s}_lat_90"] = rng.uniform(5, 20) * (1 + 0.1 * rng.standard_normal(n))
    return out


def write_case(
    folder: Path, seed: int, root: str, kind: str, normal_s: int = 300, anomalous_s: int = 200
) -> tuple[int, int]:
    """Write one case; the first and last second of its anomalous file."""
    rng = np.random.default_rng(seed)
    base = _series(rng, normal_s + anomalous_s)
    columns = list(base)
    normal = {c: v[:normal_s] for c, v in base.items()}
    shift = {
        c: rng.uniform(0.85, 1.15) if "_cpu" in c else rng.uniform(0.99, 1.01) for c in columns
    }
    anomalous = {c: v[normal_s:] * shift[c] for c, v in base.items()}
    ramp = np.linspace(0.0, 1.0, anomalous_s)
    if kind == "cpu":
        anomalous[f"{root}_cpu"] = anomalous[f"{root}_cpu"] + 80.0 * (
            1 + 0.02 * rng.standard_normal(anomalous_s)
        )
    else:
        anomalous[f"{root}_mem"] = anomalous[f"{root}_mem"] * (1 + 0.5 * ramp)
    for s in FRONT:  # callers slow down too
        anomalous[f"{s}_lat_90"] = anomalous[f"{s}_lat_90"] * (1.5 + ramp)
    folder.mkdir(parents=True, exist_ok=True)
    start = T0 + normal_s + GAP_S
    for name, data, t0, n in (
        ("normal", normal, T0, normal_s),
        ("anomalous", anomalous, start, anomalous_s),
    ):
        rows = [",".join(["time", *columns])]
        rows += [",".join([str(t0 + i), *(f"{data[c][i]:.6g}" for c in columns)]) for i in range(n)]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return start, start + anomalous_s - 1


def planted(tmp_path: Path, per_kind: int = 5) -> list[tuple[Path, str, str, tuple[int, int]]]:
    """Cases (folder, root service, kind, anomalous period) over the services in turn."""
    out = []
    for i in range(per_kind):
        for k, kind in enumerate(("cpu", "mem")):
            root = SERVICES[(2 * i + k) % len(SERVICES)]
            folder = tmp_path / f"{root}-{kind}" / str(i)
            out.append((folder, root, kind, write_case(folder, 100 * i + k, root, kind)))
    return out
