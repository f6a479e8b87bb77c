"""Why a reach policy picks its side: the policy's side per start against the data's (NumPy only).

From the start box both sides are equally good and the expert picks one by a fair coin, so
a policy that keeps both modes takes each side from every start. Three questions, answered
on `starts` coverage starts with `draws` noise draws each (open loop, the first chunk):

- is the noise ignored? `noise_share`: the share of the first chunks' y displacement
  variance that lies within a start (between noise draws) rather than between starts; 1 when
  the side is decided by the noise alone, 0 when by the start alone.
- does the observation decide? `sign_agreement`: at how many starts the majority side is
  the sign of the start's y offset.
- does the data carry the mode? `data_above(bandwidth)`: the training chunks' fraction going
  above among those whose observation lies near the start (a Gaussian kernel of that width
  over the 4 observation features). Every chunk after a demonstration's first step has
  already moved toward its side, so near a start with y > 0 most training chunks go above;
  a narrow kernel recovers the side of the nearest demonstrations. A start is "covered"
  by these fractions when each side has at least `min_fraction`, as in `mode_coverage`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from meanflow_common.data import reach
from meanflow_common.evaluate.reach_metrics import COVERAGE_DRAWS, COVERAGE_MIN_FRACTION, COVERAGE_STARTS
from meanflow_common.evaluate.rollout import chunk_dy, chunk_sides

__all__ = ["data_above", "side_probe", "BANDWIDTHS"]

BANDWIDTHS = (0.01, 0.02, 0.04)


def data_above(train: Mapping[str, np.ndarray], obs: np.ndarray, bandwidth: float) -> np.ndarray:
    """float [n]: the kernel-weighted fraction of training chunks going above near each
    observation obs [n, 4] (train: a reach split with "obs" [M, 4] and "mode" [M])."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    x, mode = np.asarray(train["obs"], np.float64), np.asarray(train["mode"])
    obs = np.asarray(obs, np.float64)
    if obs.ndim != 2 or obs.shape[1] != x.shape[1]:
        raise ValueError(f"observations must be [n, {x.shape[1]}], got {obs.shape}")
    d2 = ((obs[:, None, :] - x[None]) ** 2).sum(-1)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * bandwidth ** 2))  # shifted: no underflow to 0/0
    return (w * (mode == 0)).sum(1) / w.sum(1)


def _covered(above: np.ndarray, min_fraction: float) -> int:
    return int(np.sum((above >= min_fraction) & (1 - above >= min_fraction)))


def side_probe(policy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], train: Mapping[str, np.ndarray],
               starts: int = COVERAGE_STARTS, draws: int = COVERAGE_DRAWS, seed: int = 0,
               min_fraction: float = COVERAGE_MIN_FRACTION, bandwidths: Sequence[float] = BANDWIDTHS,
               history: bool = False) -> dict:
    """The probe of the module doc on the coverage starts of evaluation `seed`.

    policy_fn(obs [n, 4] ([n, 6] with history, at rest), noise [n, 10, 2]) -> first chunks
    [n, 10, 2]; train: the split the policy was trained on (its obs of the same width). Returns
    {"policy_above": [starts] fractions of chunks going above (of those taking a side),
    "policy_covered", "noise_share", "sign_agreement", "start_y": [starts],
    "data_above_h{bandwidth}": [starts], "data_covered_h{bandwidth}": int, ...}.
    """
    s, g = reach.sample_tasks(starts, np.random.default_rng([seed, 9]))
    obs = reach.make_obs(s, g, s if history else None)
    noise = np.random.default_rng([seed, 10]).standard_normal((starts * draws, reach.CHUNK, reach.ACTION_DIM))
    chunk = np.asarray(policy_fn(np.repeat(obs, draws, 0), noise.astype(np.float32)), np.float64)
    if chunk.shape != (starts * draws, reach.CHUNK, reach.ACTION_DIM):
        raise ValueError(f"policy_fn returned shape {chunk.shape}, expected {(starts * draws, reach.CHUNK, 2)}")
    dy = chunk_dy(chunk).reshape(starts, draws)
    side = chunk_sides(chunk).reshape(starts, draws)
    sided = np.maximum((side >= 0).sum(1), 1)
    above = (side == 0).sum(1) / sided
    total = dy.var()
    out = {"policy_above": above.tolist(), "policy_covered": _covered(above, min_fraction),
           "noise_share": float(dy.var(1).mean() / total) if total > 0 else 0.0,
           "sign_agreement": int(np.sum((above > 0.5) == (s[:, 1] > 0))), "start_y": s[:, 1].tolist(),
           "starts": int(starts), "draws": int(draws)}
    for h in bandwidths:
        d = data_above(train, obs, h)
        out[f"data_above_h{h:g}"] = d.tolist()
        out[f"data_covered_h{h:g}"] = _covered(d, min_fraction)
        out[f"data_sign_agreement_h{h:g}"] = int(np.sum((d > 0.5) == (s[:, 1] > 0)))
    return out


def main(argv=None) -> int:
    """`python -m meanflow_common.evaluate.reach_probe --backend torch --run DIR [DIR...]`:
    the probe of each reach run (its EMA weights, 1 step unless --num-steps), as JSON lines."""
    import argparse
    import importlib
    import json

    from meanflow_common.tasks import get_task

    p = argparse.ArgumentParser(prog="python -m meanflow_common.evaluate.reach_probe", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("jax", "torch"), required=True, help="the framework the runs were trained in")
    p.add_argument("--run", nargs="+", required=True, help="reach run folders")
    p.add_argument("--num-steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="evaluation seed: the coverage starts and the noise")
    args = p.parse_args(argv)
    load_run = importlib.import_module(f"{args.backend}_meanflow.train").load_run
    for run_dir in args.run:
        run = load_run(run_dir)
        data = get_task(run.cfg.task).dataset(run.cfg.seed)  # the run's own demonstrations
        if "mode" not in data.train or "obs" not in data.train:
            p.error(f"{run_dir} is a {run.cfg.task!r} run, whose data has no demonstration sides; the probe reads "
                    "reach runs")
        probe = side_probe(lambda o, n: run.sample(o, noise=n, num_steps=args.num_steps), data.train, seed=args.seed,
                           history=bool(data.info.get("history", False)))
        print(json.dumps({"run": run_dir, "num_steps": args.num_steps, "seed": args.seed, **probe}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
