#!/usr/bin/env python3
"""The feedback controller of dlba.loading on a simulated back end that thrashes.

    python bench/controller_sim.py                  # knee at 8, 32 clients, start at 256
    python bench/controller_sim.py --model usl      # a smooth contention curve instead
    python bench/controller_sim.py --slow 40 70 4   # every request 4x slower from 40 to 70 s

Runs tests/loadsim.py (a deterministic discrete-event simulation: no sockets, no reactor,
seconds of CPU) with no limit, with every static limit from 1 to 2·knee (the best of them is
"best static"), and with the adaptive controller for both targets starting from a limit far
too high. Prints completions/s, client-side p50/p99 (queue wait included), the back end's
p90, the settling time (when the limit entered, for good, +-20% of its final median) and
the swing of the last 20 s; then an ASCII chart of each adaptive limit over time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlba.loading import ControllerOptions, FeedbackController, quantile
from tests.loadsim import Contention, Model, SharpKnee, SimResult, best_concurrency, simulate

LEVELS = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024]


def chart(run: SimResult, width: int, ceiling: int, title: str) -> str:
    """The limit over time on a log scale: per column (a slice of time) '*' marks the
    median limit, '.' the other limits it held (probes)."""
    points = run.limits
    end = points[-1][0]
    rows = [n for n in LEVELS if n <= max(ceiling, 1)]

    def row(value: float) -> int:
        return min(rows, key=lambda r: abs(math.log(r) - math.log(value)))

    cols: list[tuple[int, set[int]]] = []
    for i in range(width):
        lo, hi = end * i / width, end * (i + 1) / width
        inside = [n for t, n in points if lo <= t < hi]
        if not inside:
            inside = [cols[-1][0]] if cols else [points[0][1]]
        cols.append((row(statistics.median(inside)), {row(n) for n in inside}))
    lines = [title]
    for level in reversed(rows):
        marks = ("*" if mid == level else "." if level in seen else " " for mid, seen in cols)
        lines.append(f"{level:>5} |{''.join(marks)}")
    lines.append("      +" + "-" * width)
    ticks = "".join(f"{end * i / width:<10.0f}" for i in range(0, width - 9, 10))
    lines.append("       " + ticks + " s")
    return "\n".join(lines)


def describe(run: SimResult, duration: float) -> tuple[str, str, float]:
    tail = run.limits_between(duration - 20, duration + 1)
    median = statistics.median(tail)
    swing = max(abs(n / median - 1) for n in tail)
    return f"{median:g}", f"±{swing:.0%}", run.settling_time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("knee", "usl"), default="knee")
    parser.add_argument("--t0", type=float, default=0.02, help="service time alone, s")
    parser.add_argument("--knee", type=int, default=8, help="best concurrency")
    parser.add_argument("--clients", type=int, default=0, help="default: 4 x knee")
    parser.add_argument("--think", type=float, default=0.0, help="client think time, s")
    parser.add_argument("--ceiling", type=int, default=256, help="max_concurrent (start)")
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured start, s")
    parser.add_argument("--tick", type=float, default=0.25, help="controller tick, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exact", action="store_true", help="every request t0 of work")
    parser.add_argument(
        "--slow", nargs=3, type=float, metavar=("START", "END", "FACTOR"), help="slow spell"
    )
    parser.add_argument("--width", type=int, default=90, help="chart columns")
    args = parser.parse_args(argv)

    model: Model
    if args.model == "knee":
        model = SharpKnee(t0=args.t0, knee=args.knee, power=2.0)
        shape = f"T(c) = {args.t0 * 1000:g} ms · max(1, c/{args.knee})²"
    else:
        model = Contention(t0=args.t0, sigma=0.0, kappa=1.0 / args.knee**2)
        shape = f"T(c) = {args.t0 * 1000:g} ms · (1 + c(c-1)/{args.knee**2})"
    best_c = best_concurrency(model)
    clients = args.clients or 4 * best_c
    slow = [(args.slow[0], args.slow[1], args.slow[2])] if args.slow else []
    common = dict(
        clients=clients,
        think=args.think,
        duration=args.duration,
        warmup=args.warmup,
        tick=args.tick,
        slow=slow,
        deterministic=args.exact,
        seed=args.seed,
    )
    print(f"back end: {shape}; best concurrency {best_c}: {best_c / model.time(best_c):.0f}/s")
    print(
        f"{clients} closed-loop clients, think {args.think:g} s; {args.duration:g} s simulated,"
        f" first {args.warmup:g} s unmeasured; controller tick {args.tick:g} s; seed {args.seed}"
        + (f"; slow x{args.slow[2]:g} from {args.slow[0]:g} to {args.slow[1]:g} s" if slow else "")
    )
    print(f"defaults: {ControllerOptions()}")
    print()

    runs: dict[str, SimResult] = {}
    runs["no limit"] = simulate(model, **common)
    statics = {n: simulate(model, limit=n, **common) for n in range(1, 2 * best_c + 1)}
    best_n = max(statics, key=lambda n: statics[n].throughput)
    runs[f"best static ({best_n})"] = statics[best_n]
    adaptive: dict[str, SimResult] = {}
    for target in ("latency", "throughput"):
        controller = FeedbackController(args.ceiling, target)
        adaptive[target] = runs[f"adaptive {target}"] = simulate(
            model,
            controller=controller,
            **common,
        )

    free = runs["no limit"]
    best = statics[best_n]
    header = (
        f"{'mode':<22}{'limit':>7}{'compl/s':>9}{'x none':>8}{'of best':>9}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'be p90':>8}{'503s':>6}{'settle s':>9}{'swing':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, run in runs.items():
        if name.startswith("adaptive"):
            limit, swing, settle = describe(run, args.duration)
            extra = f"{settle:>9.1f}{swing:>7}"
        else:
            limit = "none" if name == "no limit" else str(best_n)
            extra = f"{'':>9}{'':>7}"
        be_p90 = quantile(run.rtts, 0.9) * 1000 if run.rtts else math.nan
        print(
            f"{name:<22}{limit:>7}{run.throughput:>9.1f}"
            f"{run.throughput / free.throughput:>7.2f}x{run.throughput / best.throughput:>9.0%}"
            f"{run.p50 * 1000:>8.1f}{run.p99 * 1000:>8.1f}{be_p90:>8.1f}{run.errors:>6}{extra}"
        )
    print()
    print("static sweep: " + ", ".join(f"{n}: {r.throughput:.0f}/s" for n, r in statics.items()))
    for target, run in adaptive.items():
        print()
        title = f"adaptive {target}: limit over time (log scale, median per column)"
        print(chart(run, args.width, args.ceiling, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
