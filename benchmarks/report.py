"""Markdown table and throughput plot from a run's data (see run.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

COLUMNS = [
    "pgqueue",
    "pgqueue-history-off",
    "procrastinate",
    "pgqueuer",
    "plain-single",
    "plain-batch",
]
LABELS = {
    "pgqueue": "pgqueue",
    "pgqueue-history-off": "history off",
    "procrastinate": "Procrastinate",
    "pgqueuer": "PgQueuer",
    "plain-single": "plain 1/txn",
    "plain-batch": "plain batch",
}
# "pgqueue / history off": the share of throughput that task history keeps (goal >= 0.85).
RATIO_PEERS = ["pgqueue-history-off", "procrastinate", "pgqueuer", "plain-batch"]

# (key, label, unit, higher_is_better, source) source: results or extras key
ROWS = [
    ("enqueue_one", "enqueue, 1 task per transaction", "tasks/s", True),
    ("enqueue_bulk", "enqueue, bulk 5,000 per call", "tasks/s", True),
    ("drain_p1_c1", "drain, 1 process, concurrency 1", "tasks/s", True),
    ("drain_p1_c10", "drain, 1 process, concurrency 10", "tasks/s", True),
    ("drain_p1_c50", "drain, 1 process, concurrency 50", "tasks/s", True),
    ("drain_p2_c50", "drain, 2 processes, concurrency 50", "tasks/s", True),
    ("wakeup_p50", "wake-up latency p50 (idle worker)", "ms", False),
    ("wakeup_p99", "wake-up latency p99 (idle worker)", "ms", False),
    ("drain_p1_c50:rss_mb", "worker peak RSS (1 process, c=50 drain)", "MB", False),
    ("drain_p1_c50:cpu_us", "worker CPU per task (1 process, c=50)", "µs", False),
    ("drain_p1_c10:cpu_us", "worker CPU per task (1 process, c=10)", "µs", False),
    ("drain_p1_c50:startup_s", "worker start-up to READY (not timed in drains)", "s", False),
    ("scale_p1_c50", "scale: drain c=50, empty table", "tasks/s", True),
    ("scale_full_p1_c50", "scale: drain c=50, finished rows in table", "tasks/s", True),
]


def _series(data: dict, key: str) -> dict[str, list[float]]:
    if ":" in key:
        return data["extras"].get(key, {})
    return data["results"].get(key, {})


def _fmt(v: float, unit: str) -> str:
    if unit == "tasks/s" or (unit == "µs" and v >= 10):
        return f"{v:,.0f}"
    if unit == "MB":
        return f"{v:.0f}"
    return f"{v:.2f}"


def _cell(vals: list[float] | None, unit: str) -> str:
    if not vals:
        return "\u2013"
    med = statistics.median(vals)
    if len(vals) == 1:
        return _fmt(med, unit)
    return f"{_fmt(med, unit)} ({_fmt(min(vals), unit)}\u2013{_fmt(max(vals), unit)})"


def _ratio(series: dict[str, list[float]], peer: str) -> str:
    a, b = series.get("pgqueue"), series.get(peer)
    if not a or not b:
        return "\u2013"
    mb = statistics.median(b)
    if mb == 0:
        return "\u2013"
    return f"{statistics.median(a) / mb:.2f}\u00d7"


def _scale_ratio(data: dict) -> dict[str, list[float]]:
    """Per system: median drain with finished rows / median drain on an empty table."""
    empty = data["results"].get("scale_p1_c50", {})
    full = data["results"].get("scale_full_p1_c50", {})
    return {
        n: [statistics.median(full[n]) / statistics.median(empty[n])] for n in full if empty.get(n)
    }


def table(data: dict) -> str:
    cols = [c for c in COLUMNS if c in data["systems"] or c in data["skipped"]]
    head = ["workload", "unit"] + [LABELS[c] for c in cols]
    head += [f"pgqueue / {LABELS[p]}" for p in RATIO_PEERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [*ROWS, ("scale_ratio", "scale: finished-rows / empty (goal >= 0.90)", "x", True)]
    for key, label, unit, better_high in rows:
        series = _scale_ratio(data) if key == "scale_ratio" else _series(data, key)
        if not series:
            continue
        row = [label, unit + (" ↑" if better_high else " ↓")]
        row += [_cell(series.get(c), unit) for c in cols]
        row += [_ratio(series, p) for p in RATIO_PEERS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(data: dict) -> str:
    m = data["meta"]
    mach, pg = m["machine"], m["postgres"]
    prof = m["profile"]
    pkgs = ", ".join(f"{k} {v}" for k, v in mach["packages"].items() if v)
    settings = ", ".join(f"{k}={v}" for k, v in pg["settings"].items())
    out = [
        f"# pgqueue benchmark — {m['started']} ({m['mode']} mode)",
        "",
        "Cells: median of the repetitions (min\u2013max). ↑ higher is better, ↓ lower is better."
        " Ratios are median(pgqueue) / median(peer).",
        "",
        table(data),
        "",
        "## Setup",
        "",
        f"- Machine: {mach['nproc']} cores, {mach['memory_gb']} GB, {mach['cpu_model']};"
        f" Linux {mach['kernel']}; Python {mach['python']}",
        f"- Packages: {pkgs}; pgqueue git rev {mach.get('git_rev') or 'n/a'}",
        f"- PostgreSQL: {pg['version']}",
        f"- Settings: {settings}",
        f"- Repetitions: {prof['reps']}; enqueue one/txn {prof['enqueue_one']:,} tasks;"
        f" bulk {prof['enqueue_bulk']:,} tasks in calls of {m['bulk_batch']:,};"
        f" drains of {prof['drain']:,} no-op tasks; {prof['wakeup']} wake-up samples at"
        f" worker concurrency {m['wakeup_concurrency']}; run took {m.get('elapsed_s')} s",
        f"- Command: `{m['command']}`",
        f"- 1-minute load average at each repetition's start, then at the end:"
        f" {m.get('load_averages')}"
        + (
            " — **the machine was busy with other jobs: figures are disturbed**"
            if max(m.get("load_averages") or [0]) > 1.5
            else ""
        ),
        "",
        "## Method",
        "",
        "- Each measurement gets a fresh database copied from a per-system template that"
        " holds only that system's schema. Systems are interleaved per workload within each"
        " repetition; their order rotates between repetitions.",
        "- Drains: the N tasks are enqueued (bulk) and VACUUM ANALYZEd first; worker"
        " processes are started as subprocesses (runner.py), import their code, report"
        " READY, and the clock starts when they are told to go. It stops when the database"
        " shows all N finished (polled every 20 ms). CPU is the workers' user+system time"
        " from /proc between GO and that moment, divided by N; RSS is VmHWM.",
        "- Wake-up: an idle worker (concurrency 10); the producer enqueues one task, takes"
        " time.time() when the commit returns, and the task body records time.time() at"
        " start. One sample at a time, 10\u201320 ms apart, after 3 warm-up samples.",
        "- Plain baselines: psycopg 3 only. `plain 1/txn` claims one row with"
        " `FOR UPDATE SKIP LOCKED LIMIT 1` and completes it in the same transaction, one"
        " loop per concurrency slot; its bulk enqueue is `INSERT … SELECT FROM unnest`."
        " `plain batch` claims 100 rows per statement and completes them in one statement;"
        " its bulk enqueue is `COPY`. Both enqueue one task per transaction with an"
        " INSERT-and-commit loop.",
        "- Procrastinate: async task, PsycopgConnector pool of min(C, 30) + 2, run_worker_async"
        " with LISTEN/NOTIFY. PgQueuer: asyncpg driver on uvloop; C = 1 → batch_size 1 and"
        " entrypoint concurrency_limit 1; C ≥ 2 → max_concurrent_tasks C, batch_size C // 2.",
        "",
    ]
    if data["skipped"]:
        out += ["## Skipped", ""]
        out += [f"- {k}: {v}" for k, v in data["skipped"].items()]
        out.append("")
    if data.get("over_budget"):
        out += ["## Not run (quick mode's time budget was spent)", ""]
        out += [f"- {e}" for e in data["over_budget"]]
        out.append("")
    if data["errors"]:
        out += ["## Failed measurements", ""]
        out += [f"- {e[:500]}" for e in data["errors"]]
        out.append("")
    return "\n".join(out)


def plot(data: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.5))
    concs = [1, 10, 50]
    for i, name in enumerate(c for c in COLUMNS if c in data["systems"]):
        color = f"C{i}"
        xs, ys, lo, hi = [], [], [], []
        for c in concs:
            vals = data["results"].get(f"drain_p1_c{c}", {}).get(name)
            if vals:
                med = statistics.median(vals)
                xs.append(c)
                ys.append(med)
                lo.append(med - min(vals))
                hi.append(max(vals) - med)
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                marker="o",
                capsize=3,
                color=color,
                label=f"{LABELS[name]} (1 process)",
            )
        vals = data["results"].get("drain_p2_c50", {}).get(name)
        if vals:
            med = statistics.median(vals)
            ax.errorbar(
                [50 * 1.08],
                [med],
                yerr=[[med - min(vals)], [max(vals) - med]],
                marker="s",
                mfc="none",
                capsize=3,
                color=color,
                linestyle="none",
                label=f"{LABELS[name]} (2 processes)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(concs)
    ax.set_xticklabels([str(c) for c in concs])
    ax.set_xlabel("worker concurrency (per process)")
    ax.set_ylabel("drain throughput, no-op tasks/s (log)")
    m = data["meta"]
    ax.set_title(
        f"Drain of {m['profile']['drain']:,} tasks — median, min\u2013max bars"
        f" ({m['mode']}, {m['machine']['nproc']} cores)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    # Re-render a run's Markdown and plot: python benchmarks/report.py results/X.json
    import json
    import sys

    src = Path(sys.argv[1])
    run = json.loads(src.read_text())
    src.with_suffix(".md").write_text(markdown(run))
    print(plot(run, src.parent / "throughput.png"))
