# Copyright 2026 The sage_irp_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""``sage_irp plot``: latency and salience over a session, as a PNG, from the SQLite memory store.

Why: the store already holds every recorded exchange with its timing and SNARC scores, so a picture of
a session (did answers get slower as the board heated up? which exchanges were salient?) needs no extra
logging. Two panels share the time axis (seconds since the first plotted exchange): the total latency
(``timing.total_s``) and the total salience, salient exchanges highlighted. Rendered on matplotlib's
Agg canvas without pyplot: no display needed (robots, CI), no global backend change. Needs ``matplotlib``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sage_irp_ros.irp.confidence import expected_calibration_error, reliability_bins
from sage_irp_ros.salience.memory_store import MemoryStore


def session_series(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Per-exchange series from :meth:`MemoryStore.query` rows: t (s since the first), latency, salience."""
    t0 = rows[0]["stamp"] if rows else 0.0
    latency = [(row.get("timing") or {}).get("total_s") for row in rows]
    return {"t": [row["stamp"] - t0 for row in rows],
            "latency": [float(v) if isinstance(v, (int, float)) else float("nan") for v in latency],
            "salience": [float(row["total"]) for row in rows],
            "salient": [bool(row["salient"]) for row in rows]}


def plot_session(db: str | Path, out: str | Path, since: Optional[float] = None,
                 conversation: Optional[str] = None, title: Optional[str] = None) -> int:
    """Write the PNG for the exchanges matching the filters; returns how many were plotted (0: no file)."""
    with MemoryStore(db) as store:
        rows = store.query(since=since, conversation=conversation)
    if not rows:
        return 0
    s = session_series(rows)
    fig = Figure(figsize=(9, 5.5), layout="constrained")  # no pyplot: no global backend, no GUI
    FigureCanvasAgg(fig)
    ax_lat, ax_sal = fig.subplots(2, 1, sharex=True)
    ax_lat.plot(s["t"], s["latency"], marker=".", color="tab:blue")
    ax_lat.set_ylim(bottom=0.0)
    ax_lat.set_ylabel("latency total_s [s]")
    ax_lat.grid(alpha=0.3)
    ax_sal.plot(s["t"], s["salience"], color="tab:gray", alpha=0.5)
    colours = ["tab:red" if salient else "tab:gray" for salient in s["salient"]]
    ax_sal.scatter(s["t"], s["salience"], c=colours, s=14, zorder=3)
    ax_sal.set_ylim(0.0, 1.0)
    ax_sal.set_ylabel("salience total")
    ax_sal.set_xlabel("time since first exchange [s]")
    ax_sal.grid(alpha=0.3)
    models = sorted({row["model"] for row in rows if row["model"]})
    fig.suptitle(title or f"{len(rows)} exchanges, {', '.join(models) or 'unknown model'} "
                          f"(red: salient)")
    fig.savefig(out, dpi=100)
    return len(rows)


def read_labelled(path: str | Path) -> tuple[list[float], list[bool]]:
    """Confidences and right/wrong from JSON lines with ``confidence`` and ``right`` (e.g. result JSON with
    a ``right`` field added by whoever checked the answers); lines without both are skipped."""
    confidence, right = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("confidence"), (int, float)) and "right" in item:
            confidence.append(float(item["confidence"]))
            right.append(bool(item["right"]))
    return confidence, right


def plot_reliability(confidence: Sequence[float], right: Sequence[bool], out: str | Path,
                     title: str = "reliability") -> Path:
    """The reliability diagram: accuracy per confidence bin against the diagonal, counts above the bars."""
    bins = reliability_bins(confidence, right)
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=0.1, align="edge",
           alpha=0.6, edgecolor="black", label="accuracy per bin")
    for b in bins:
        ax.text(b["lo"] + 0.05, b["accuracy"] + 0.02, str(b["n"]), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence", ylabel="accuracy",
           title=f"{title}: ECE {expected_calibration_error(confidence, right):.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(out, dpi=110)
    return Path(out)
