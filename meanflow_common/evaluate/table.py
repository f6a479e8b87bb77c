"""The Markdown table of evaluation records (runs and their anchors), one table per task."""
from __future__ import annotations

import math
from typing import Sequence

from meanflow_common.evaluate.copying import N_CELLS

__all__ = ["format_table"]


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-" if x is None else str(x)
    return format(x, fmt)


def _who(r: dict) -> list[str]:
    if r.get("baseline"):
        return [f"baseline: {r['baseline']}", "", "", "", ""]
    knobs = " ".join(f"{k}={v:g}" for k, v in (r.get("sampling") or {}).items())
    method = f"{r['method']} ({knobs})" if knobs else str(r["method"])
    return [str(r["run"]), str(r["backend"]), method, str(r["train_steps"]), str(r["num_steps"])]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _digits(rows: Sequence[dict]) -> list[str]:
    head = ["run", "backend", "method", "train steps", "NFE", "accuracy", "FD", "precision", "recall", "diversity",
            "NN train px / feat", "copies exact / near", "distinct", "Z_U", "copying"]
    out = [_row(head), _row(["---"] * len(head))]
    for r in rows:
        out.append(_row(_who(r) + [
            _num(r["accuracy"], ".3f"), _num(r["fd"], ".2f"), _num(r["precision"], ".3f"), _num(r["recall"], ".3f"),
            _num(r["diversity_ratio"], ".3f"),
            f"{_num(r['nn_train_px_median'], '.2f')} / {_num(r['nn_train_feat_median'], '.2f')}",
            f"{_num(r['exact_copy_fraction'], '.3f')} / {_num(r['near_copy_fraction'], '.3f')}",
            f"{r['distinct']} / {r['n']}", _num(r["copy_z"], ".1f"),
            "untested" if r["copying"] is None else "yes" if r["copying"] else "no"]))
    r0 = rows[0]
    out.append(f"\nprecision / recall: k-NN, k = {r0['pr_k']}, classifier features, reference: {r0['pr_reference']}; "
               f"diversity: within-class feature spread over the reference's; FD real (training vs held-out "
               f"digits) {r0['fd_real']:.2f}")
    out.append(f"NN train: median distance to the nearest training digit (held-out digits: "
               f"{r0['nn_train_px_held_out']:.2f} px / {r0['nn_train_feat_held_out']:.2f} feat); near copy: closer "
               f"than {r0['near_copy_radius']:.3f} px (the smallest training-training distance); Z_U: data-copying "
               f"test (Meehan et al. 2020, pixels, {N_CELLS} k-means cells of the training digits), null = as far "
               f"from the training digits as held-out digits, copying when Z_U < {r0['copy_threshold']:g}")
    return out


def _reach(rows: Sequence[dict]) -> list[str]:
    head = ["run", "backend", "method", "train steps", "NFE", "success", "collision", "timeout", "above / below",
            "mode entropy (bits)", "starts covered", "clearance (x expert)", "path length (x expert)",
            "first chunk above / between / below"]
    out = [_row(head), _row(["---"] * len(head))]
    for r in rows:
        clear = _num(r["clearance_median"], ".3f")
        length = _num(r["path_length_median"], ".2f")
        if "clearance_vs_expert" in r and not r.get("baseline"):
            clear += f" ({_num(r['clearance_vs_expert'], '.2f')})"
            length += f" ({_num(r['path_length_vs_expert'], '.2f')})"
        out.append(_row(_who(r) + [
            _num(r["success_rate"], ".2f"), _num(r["collision_rate"], ".2f"), _num(r["timeout_rate"], ".2f"),
            f"{r['success_above']} / {r['success_below']}", _num(r["mode_entropy_bits"], ".2f"),
            f"{r['coverage_covered']} / {r['coverage_starts']}", clear, length,
            f"{r['first_chunk_above']:.2f} / {r['first_chunk_between']:.2f} / {r['first_chunk_below']:.2f}"]))
    r0 = rows[0]
    out.append(f"\nstarts covered: {r0['coverage_starts']} starts x {r0['coverage_draws']} noise draws, covered when "
               f"each side takes >= {r0['coverage_min_fraction']:.0%} of the draws; clearance / path length: medians "
               f"over the successful rollouts")
    return out


def _generic(rows: Sequence[dict]) -> list[str]:
    skip = {"run", "backend", "method", "train_steps", "num_steps", "baseline", "task", "sampling"}
    names = [k for k in rows[0] if k not in skip and isinstance(rows[0][k], (int, float))]
    head = ["run", "backend", "method", "train steps", "NFE"] + names
    return [_row(head), _row(["---"] * len(head))] + [_row(_who(r) + [_num(r.get(k), ".4g") for k in names])
                                                       for r in rows]


def _formatter(rows: Sequence[dict]):
    # by the metrics the records carry, so a task built like digits or reach (or a user's
    # task scoring the same way) gets the same table
    if all("coverage_covered" in r for r in rows):
        return _reach
    if all("fd" in r and "copy_z" in r for r in rows):
        return _digits
    return _generic


def format_table(records: Sequence[dict]) -> str:
    """Markdown tables of the records, one per task, in order of first appearance."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        parts.append(f"**{task}**\n\n" + "\n".join(_formatter(rows)(rows)))
    return "\n\n".join(parts)
