"""Run workloads interleaved, collect raw timings, write results.md / results.json / results.png."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _common

# --------------------------------------------------------------------------- data


@dataclass
class Contender:
    name: str
    fn: Callable[[], Any]
    note: str = ""
    status: str = "ok"  # "ok" | "n/a"
    reason: str = ""  # why n/a
    seconds: list[float] = field(default_factory=list)  # rate workloads: one per repetition
    samples: list[list[float]] = field(default_factory=list)  # latency workloads: one list per repetition
    warnings: list[str] = field(default_factory=list)
    traceback: str = ""

    @property
    def label(self) -> str:
        return "n/a (not installed)" if self.reason == "not installed" else f"n/a ({self.reason})"


@dataclass
class WorkloadResult:
    module: ModuleType
    contenders: list[Contender] = field(default_factory=list)
    error: str = ""

    @property
    def name(self) -> str:
        return str(self.module.NAME)


def _normalize(entry: Any) -> Contender:
    if isinstance(entry, Contender):
        return entry
    name, fn, *rest = entry
    return Contender(name=str(name), fn=fn, note=str(rest[0]) if rest else "")


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def run_values(wl: ModuleType, c: Contender) -> list[float]:
    """One value per repetition: a rate (work/second) or, for latency, that repetition's p50 (see _scale)."""
    if wl.KIND == "latency":
        return [percentile(s, 0.5) * _scale(wl) for s in c.samples]
    return [wl.WORK / s for s in c.seconds if s > 0]


def summary(wl: ModuleType, c: Contender) -> dict[str, Any] | None:
    vals = run_values(wl, c)
    if c.status != "ok" or not vals:
        return None
    out: dict[str, Any] = {"median": median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    if wl.KIND == "latency":
        pooled = [x for s in c.samples for x in s]
        out["p99"] = percentile(pooled, 0.99) * _scale(wl)
    return out


def _scale(wl: ModuleType) -> float:
    """Latency samples are seconds; a workload shows them in µs unless it sets SCALE."""
    return float(getattr(wl, "SCALE", 1e6))


def fmt_num(x: float) -> str:
    if x != x:  # NaN
        return "–"
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


# --------------------------------------------------------------------------- running


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_once(wl: ModuleType, c: Contender, rep: int, reps: int, timeout: float) -> None:
    kids_before = _common.child_snapshot()
    shm_before = _common.shm_snapshot()
    gc.collect()
    t_wall = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        with _common.time_limit(timeout, f"{c.name} run"):
            out = c.fn()
        if wl.KIND == "latency":
            c.samples.append([float(x) for x in out])
        else:
            c.seconds.append(float(out))
    except _common.Unavailable:
        c.status, c.reason = "n/a", "not installed"
    except KeyboardInterrupt as exc:
        c.status, c.reason = "n/a", "interrupted"
        interrupted = exc
    except BaseException as exc:  # a contender must never end the run
        c.status, c.reason = "n/a", f"error: {_short(exc)}"
        c.traceback = traceback.format_exc()
    finally:
        kids_seen = _common.child_snapshot()
        left = _common.reap_children(kids_before)
        if left:
            c.warnings.append(f"rep {rep}: stopped leftover processes: {', '.join(left)}")
        removed = _common.clean_leaked_shm(shm_before, {os.getpid()} | kids_before | kids_seen)
        if removed:
            c.warnings.append(f"rep {rep}: removed leaked /dev/shm entries: {', '.join(removed)}")
    wall = time.perf_counter() - t_wall
    head = f"[{wl.NAME}] rep {rep}/{reps}  {c.name}:"
    if c.status != "ok":
        _progress(f"{head} {c.label}  ({wall:.1f} s wall)")
    elif wl.KIND == "latency":
        s = c.samples[-1]
        _progress(f"{head} p50 {percentile(s, 0.5) * _scale(wl):.0f} {wl.UNIT}, "
                  f"p99 {percentile(s, 0.99) * _scale(wl):.0f} {wl.UNIT}"
                  f"  ({wall:.1f} s wall)")
    else:
        sec = c.seconds[-1]
        scaled = " [scaled]" if "scaled" in c.note else ""
        _progress(f"{head} {sec:.3f} s{scaled} = {fmt_num(wl.WORK / sec)} {wl.UNIT}  ({wall:.1f} s wall)")
    for w in c.warnings:
        if w.startswith(f"rep {rep}:"):
            _progress(f"{head} WARNING {w}")
    if interrupted is not None:
        raise interrupted


def run_workload(wl: ModuleType, reps: int, timeout: float) -> WorkloadResult:
    res = WorkloadResult(module=wl)
    try:
        res.contenders = [_normalize(e) for e in wl.contenders()]
    except Exception as exc:
        res.error = _short(exc)
        _progress(f"[{wl.NAME}] could not set up: {res.error}")
        return res
    for rep in range(1, reps + 1):
        # Each repetition starts with the next contender, so no one always runs first (on a
        # cold machine, or always right after the same neighbour).
        shift = (rep - 1) % len(res.contenders) if res.contenders else 0
        for c in res.contenders[shift:] + res.contenders[:shift]:
            if c.status == "ok":
                _run_once(wl, c, rep, reps, timeout)
    return res


# --------------------------------------------------------------------------- reporting


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "(no commit)"
    except Exception:
        return "(unknown)"


def byte_compile(package: ModuleType) -> bool:
    """Compile a package's modules to bytecode, as pip does when it installs a wheel.

    An editable install run with PYTHONDONTWRITEBYTECODE=1 (as on these machines) would
    otherwise compile every busmp module from source in every spawned worker, a cost no
    installed busmp pays and the standard library's precompiled modules never do."""
    import compileall

    return bool(compileall.compile_dir(str(Path(package.__file__ or "").parent), quiet=1))


def collect_meta(args: Any, root: Path) -> dict[str, Any]:
    try:
        busmp = _common.load_busmp()
        compiled = "byte-compiled first, as a wheel install is" if byte_compile(busmp) else "not byte-compiled"
        busmp_state = f"{getattr(busmp, '__version__', '?')} (imports; {compiled})"
    except BaseException as exc:
        busmp_state = f"does not import: {_short(exc)}"
    try:
        import numpy

        np_version = numpy.__version__
    except ImportError:
        np_version = "not installed"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "start_method": multiprocessing.get_start_method(),
        "numpy": np_version,
        "busmp": busmp_state,
        "busmp_options": dict(_common.BUSMP_OPTIONS),
        "git": _git_commit(root),
        "repetitions": args.repeat,
        "quick": bool(args.quick),
        "timeout_per_run_s": args.timeout,
    }


def _ratio(wl: ModuleType, s: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if s is None or base is None or not base["median"]:
        return "–"
    return f"{s['median'] / base['median']:.2f}x"


def render_markdown(meta: dict[str, Any], results: list[WorkloadResult], plot_note: str) -> str:
    lines = ["# busmp benchmarks", ""]
    lines.append(
        f"{meta['date']} · Python {meta['python']} · {meta['cpus']} CPUs · {meta['platform']} · "
        f"peers' start method `{meta['start_method']}` · numpy {meta['numpy']} · git {meta['git']}"
    )
    lines.append("")
    lines.append(f"- busmp: {meta['busmp']}" + (f"; EventStore options {meta['busmp_options']}"
                                                 if meta["busmp_options"] else ""))
    lines.append(f"- {meta['repetitions']} repetitions per contender{' (--quick)' if meta['quick'] else ''}, "
                 "contenders interleaved within each repetition; median and min–max over repetitions; "
                 "ratio = contender median / baseline median.")
    for run in meta.get("merged", []):
        lines.append(f"- rows of {', '.join(run['workloads'])} from a later run ({run['date']}, git {run['git']}, "
                     f"{run['repetitions']} repetitions), merged into this one's (`--merge`).")
    lines.append(f"- {plot_note}")
    lines.append("")
    for r in results:
        wl = r.module
        lines.append(f"## {wl.NAME}: {wl.TITLE}")
        lines.append("")
        if r.error:
            lines.append(f"Workload could not be set up: {r.error}")
            lines.append("")
            continue
        base_c = next((c for c in r.contenders if c.name == wl.BASELINE), None)
        base = summary(wl, base_c) if base_c else None
        ratio_label = getattr(wl, "RATIO_LABEL", f"vs {wl.BASELINE}")
        if wl.KIND == "latency":
            lines.append(f"Lower is better. Ratio < 1 means faster than the baseline `{wl.BASELINE}`.")
            lines.append("")
            lines.append(f"| contender | p50 ({wl.UNIT}) | p50 min–max | p99 ({wl.UNIT}) "
                         f"| {ratio_label} (p50) | notes |")
            lines.append("|---|---:|---:|---:|---:|---|")
        else:
            lines.append(f"Higher is better. Ratio > 1 means faster than the baseline `{wl.BASELINE}`.")
            lines.append("")
            lines.append(f"| contender | median ({wl.UNIT}) | min – max | {ratio_label} | notes |")
            lines.append("|---|---:|---:|---:|---|")
        for c in r.contenders:
            s = summary(wl, c)
            name = f"**{c.name}**" if c is base_c else c.name
            note = c.note.replace("|", "\\|")
            if s is None:
                label = c.label if c.status != "ok" else "n/a (no run)"
                label = label.replace("|", "\\|")
                cells = [label, "", "", ""] if wl.KIND == "latency" else [label, "", ""]
            elif wl.KIND == "latency":
                cells = [f"{s['median']:.0f}", f"{s['min']:.0f} – {s['max']:.0f}", f"{s['p99']:.0f}",
                         _ratio(wl, s, base)]
            else:
                cells = [fmt_num(s["median"]), f"{fmt_num(s['min'])} – {fmt_num(s['max'])}", _ratio(wl, s, base)]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {note} |")
        lines.append("")
        for n in getattr(wl, "NOTES", []):
            lines.append(f"- {n}")
        for c in r.contenders:
            for w in c.warnings:
                lines.append(f"- warning ({c.name}): {w}")
        lines.append("")
    return "\n".join(lines)


def to_json(meta: dict[str, Any], results: list[WorkloadResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta, "workloads": {}}
    for r in results:
        wl = r.module
        entry: dict[str, Any] = {
            "title": wl.TITLE, "kind": wl.KIND, "unit": wl.UNIT, "baseline": wl.BASELINE,
            "work_per_run": getattr(wl, "WORK", None), "notes": list(getattr(wl, "NOTES", [])),
            "error": r.error or None, "contenders": {},
        }
        for c in r.contenders:
            entry["contenders"][c.name] = {
                "status": c.status if c.status == "ok" else c.label,
                "note": c.note,
                "seconds": c.seconds,
                "samples_seconds": c.samples,
                "summary": summary(wl, c),
                "warnings": c.warnings,
                "traceback": c.traceback or None,
            }
        out["workloads"][wl.NAME] = entry
    return out


def render_plot(results: list[WorkloadResult], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG chart skipped: matplotlib is not installed (it is the optional `bench` extra)."
    shown = [r for r in results if not r.error and any(summary(r.module, c) for c in r.contenders)]
    if not shown:
        return "PNG chart skipped: no workload produced numbers."
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.1 + 0.55 * sum(len(r.contenders) for r in shown)
                                                       + 0.8 * len(shown)), squeeze=False)
    try:
        for ax, r in zip(axes[:, 0], shown):
            wl = r.module
            rows = [(c, summary(wl, c)) for c in r.contenders]
            rows = [(c, s) for c, s in rows if s is not None][::-1]
            names = [c.name for c, _ in rows]
            med = [s["median"] for _, s in rows]
            err = [[s["median"] - s["min"] for _, s in rows], [s["max"] - s["median"] for _, s in rows]]
            colors = ["tab:orange" if c.name.startswith("busmp") else
                      ("tab:gray" if c.name == wl.BASELINE else "tab:blue") for c, _ in rows]
            ax.barh(names, med, xerr=err, color=colors, capsize=3)
            what = f"p50 {wl.UNIT} (lower is better)" if wl.KIND == "latency" else f"{wl.UNIT} (higher is better)"
            log = max(med) > 100 * min(med) > 0
            ax.set_title(f"{wl.NAME}: {what}{', log scale' if log else ''}", fontsize=10, loc="left")
            ax.tick_params(axis="y", labelsize=8)
            if log:
                ax.set_xscale("log")
            else:
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return f"Chart: `{path.name}` (bars: median; whiskers: min–max; orange: busmp, grey: baseline)."


def load_results(out_dir: Path) -> tuple[dict[str, Any], list[WorkloadResult]]:
    """The meta and workload results of an earlier run written to ``out_dir`` (its
    ``results.json``), rebuilt so that they render as they did; ``({}, [])`` when there is none."""
    from . import WORKLOADS, load_workload

    path = out_dir / "results.json"
    if not path.exists():
        return {}, []
    data = json.loads(path.read_text(encoding="utf-8"))
    results: list[WorkloadResult] = []
    for name, entry in data["workloads"].items():
        if name not in WORKLOADS:
            continue  # a workload since removed: its rows cannot be rendered any more
        res = WorkloadResult(module=load_workload(name), error=entry.get("error") or "")
        for cname, c in entry["contenders"].items():
            status = c["status"]
            reason = "" if status == "ok" else status.removeprefix("n/a (").removesuffix(")")
            res.contenders.append(Contender(
                name=cname, fn=lambda: None, note=c.get("note", ""), status="ok" if status == "ok" else "n/a",
                reason=reason, seconds=list(c.get("seconds") or []), samples=list(c.get("samples_seconds") or []),
                warnings=list(c.get("warnings") or []), traceback=c.get("traceback") or ""))
        results.append(res)
    return data["meta"], results


def merge_results(old_meta: dict[str, Any], old: list[WorkloadResult], meta: dict[str, Any],
                  new: list[WorkloadResult]) -> tuple[dict[str, Any], list[WorkloadResult]]:
    """``new`` workloads' results in place of the same workloads of an earlier run, the rest of
    that run kept, in the suite's order. The meta is the earlier run's, with each merged run
    listed under ``merged`` (date, commit, workloads), so that the page says which rows came later."""
    from . import WORKLOADS

    by_name = {r.name: r for r in old}
    by_name.update({r.name: r for r in new})
    merged_meta = dict(old_meta) if old_meta else dict(meta)
    if old_meta:
        replaced = {r.name for r in new}
        runs = []
        for run in old_meta.get("merged", []):  # an earlier merged run keeps only the rows still its own
            kept = [name for name in run["workloads"] if name not in replaced]
            if kept:
                runs.append({**run, "workloads": kept})
        runs.append({"date": meta["date"], "git": meta["git"], "workloads": [r.name for r in new],
                     "repetitions": meta["repetitions"], "total_seconds": meta.get("total_seconds")})
        merged_meta["merged"] = runs
    order = [name for name in WORKLOADS if name in by_name]
    return merged_meta, [by_name[name] for name in order]


def write_results(out_dir: Path, meta: dict[str, Any], results: list[WorkloadResult], plot: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "results.png"
    if plot:
        try:
            plot_note = render_plot(results, png)
        except Exception as exc:  # a chart must never lose the numbers
            plot_note = f"PNG chart failed: {_short(exc)}"
        if not plot_note.startswith("Chart:") and png.exists():
            png.unlink()  # never leave a chart from an older run next to new numbers
    else:
        plot_note = "PNG chart: written at the end of the run."
    (out_dir / "results.md").write_text(render_markdown(meta, results, plot_note) + "\n", encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(to_json(meta, results), indent=1, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
