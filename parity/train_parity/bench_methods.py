"""The training step of a training method (iMF, pMF, any `TrainMethod`) in both backends,
against a flow-matching step of the same network.

    python -m parity bench-methods                              # digits_imf, digits_pmf
    python -m parity bench-methods --presets digits_imf,digits_pmf --steps 7
    python -m parity bench-methods --presets tiny_imf --steps 2 --no-compile   # smoke test

For each training preset, on the same random weights (torch, every parameter randomised, the
Flax tree converted with the table of the run's parity Arch) and the same batch and
randomness (one NumPy draw, `parity.train_parity.shared_noise`): the method's full training
step as the trainers run it (loss, backward, AdamW, EMA; `jax_meanflow.train.make_loss_fn`
under jit, `torch_meanflow.train.make_loss_fn` eager and under `torch.compile`), and a
flow-matching step of the same network (its own output u(z, t, h = 0) at omega = 1 and the
interval [0, 1], regressed on e - x: one forward and one backward, no guidance forwards, no
JVP). Reported: median wall and CPU time per step (interleaved rounds,
`parity.bench.measure`), compilation, peak memory of one step, and the ratios method / FM per
backend and mode and PyTorch / JAX. Before timing, the first step's loss of the two backends
is compared (float32: they agree to ~1e-6 relative). A preset with `fast_compile` (the tiny
ones) compiles the JAX step without XLA's backend optimisations, as its trainer does: a smoke
test, not a timing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from meanflow_common.cli_args import non_negative_int, positive_int
from meanflow_common.config import get_preset
from meanflow_common.data import batch_at
from meanflow_common.json_io import write_json
from meanflow_common.tasks import get_dataset, get_task
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments, model_config
from parity.bench.measure import Runner, environment, load_average, peak_step_memory, time_interleaved

__all__ = ["bench_method", "format_method", "main"]


def _jax_runners(cfg, sd, batch_np, noise_fn, mc, table):
    import jax
    import jax.numpy as jnp

    from jax_meanflow import train as jt
    from jax_meanflow.methods import TrainTerms
    from jax_meanflow.train_state import create_train_state
    from parity.convert import torch_to_jax

    model, template = jt.make_model(cfg, batch_np)
    params = torch_to_jax(sd, table, mc, template=template)
    batch = jt.to_batch(cfg, batch_np)
    noise = noise_fn(0, batch)
    task = get_task(cfg.task)

    def fm_loss(p, b, n):
        x, y, t = b[task.data_key], b[task.cond_key], n.t
        tb = t[:, None, None, None]
        zero, one = jnp.zeros_like(t), jnp.ones_like(t)
        u = model.apply({"params": p}, (1 - tb) * x + tb * n.e, t, zero, one, zero, one, y)[0]
        per = jnp.sum((u - (n.e - x)) ** 2, axis=(1, 2, 3))
        return jnp.mean(per), TrainTerms(loss=jnp.mean(per), loss_per_sample=per, v_loss=per)

    runners, first = [], {}
    for objective, loss_fn in ((cfg.method, jt.make_loss_fn(cfg, model)), ("fm", fm_loss)):
        run = jt.compiled_train_step(cfg, loss_fn)
        box = {"state": create_train_state(params, cfg.optim)}

        def step(run=run, box=box):
            box["state"], metrics = run(box["state"], batch, noise)
            jax.block_until_ready(metrics)
            box.setdefault("first", float(metrics["loss"]))

        runners.append(Runner(f"jax jit {objective}", "jax", "jit", objective, step))
        first[objective] = box
    return runners, first


def _torch_runners(cfg, model, batch_np, noise_fn, compile_too: bool):
    import torch

    from torch_meanflow import train as tt
    from torch_meanflow.methods import TrainTerms
    from torch_meanflow.train_state import compile_loss, create_train_state, train_step

    batch = tt.to_batch(cfg, batch_np)
    noise = noise_fn(0, batch)
    task = get_task(cfg.task)

    def fm_loss(net, b, n):
        x, y, t = b[task.data_key], b[task.cond_key], n.t
        tb = t[:, None, None, None]
        zero, one = torch.zeros_like(t), torch.ones_like(t)
        u = net((1 - tb) * x + tb * n.e, t, zero, one, zero, one, y)[0]
        per = ((u - (n.e - x)) ** 2).sum(dim=(1, 2, 3))
        return TrainTerms(loss=per.mean(), loss_per_sample=per.detach(), v_loss=per.detach())

    runners, first = [], {}
    modes = [("eager", False)] + ([("compile", True)] if compile_too else [])
    for mode, compiled in modes:
        for objective, loss_fn in ((cfg.method, tt.make_loss_fn(cfg, model)), ("fm", fm_loss)):
            fn = compile_loss(loss_fn) if compiled else loss_fn
            state = create_train_state(_copy(model), cfg.optim)
            box = {}

            def step(fn=fn, state=state, box=box):
                metrics = train_step(state, fn, batch, noise, cfg.optim)
                box.setdefault("first", float(metrics["loss"]))

            runners.append(Runner(f"torch {mode} {objective}", "torch", mode, objective, step))
            first.setdefault(objective, box)
    return runners, first


def _copy(model):
    import copy

    return copy.deepcopy(model)


def bench_method(preset: str, steps: int = 7, warmup: int = 2, batch: Optional[int] = None,
                 compile_too: bool = True, log=print) -> dict:
    """One preset's record: runners (name, backend, mode, objective, wall_ms, cpu_ms,
    compile_s, memory), the first-step losses of both backends and the ratios."""
    from parity.train_parity.run import arch_of, shared_noise
    from torch_meanflow import train as tt
    from torch_meanflow.params import randomize_params

    cfg = get_preset(TRAIN_PRESETS, preset, "training preset")
    if batch:
        cfg = apply_assignments(cfg, [f"batch_size={batch}"])
    mc = model_config(cfg)
    batch_np = batch_at(get_dataset(cfg.task, cfg.seed), cfg.seed, 0, cfg.batch_size)
    model = randomize_params(tt.make_model(cfg, batch_np), 0)
    sd = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
    jax_noise, torch_noise = shared_noise(cfg)
    j_runners, j_first = _jax_runners(cfg, sd, batch_np, jax_noise, mc, arch_of(mc).table)
    t_runners, t_first = _torch_runners(cfg, model, batch_np, torch_noise, compile_too)
    log(f"\n== {preset}: {cfg.method} on {type(mc).__name__} (batch {cfg.batch_size}) ==")
    load_before = load_average()
    alive = time_interleaved(j_runners + t_runners, steps, warmup, log=log)
    load_after = load_average()
    for r in alive:
        r.result["memory"] = peak_step_memory(r, "cpu")
    first = {o: (j_first[o].get("first"), t_first[o].get("first")) for o in j_first}
    records = [{"name": r.name, "backend": r.backend, "mode": r.mode, "objective": r.objective, **r.result}
               for r in j_runners + t_runners]
    out = {"preset": preset, "method": cfg.method, "model": type(mc).__name__, "batch": cfg.batch_size,
           "load_before": load_before, "load_after": load_after, "first_step_loss": first, "runners": records,
           "ratios": _ratios(records, cfg.method)}
    log(format_method(out))
    return out


def _ratios(records: list[dict], method: str) -> dict:
    t = {r["name"]: r.get("wall_ms") for r in records}

    def div(a, b):
        return t[a] / t[b] if t.get(a) and t.get(b) else None

    return {"method_over_fm": {mode: div(f"{mode} {method}", f"{mode} fm")
                               for mode in ("jax jit", "torch eager", "torch compile")},
            "torch_over_jax": {"eager": div(f"torch eager {method}", f"jax jit {method}"),
                               "compile": div(f"torch compile {method}", f"jax jit {method}")}}


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_method(rec: dict) -> str:
    lines = [f"{'runner':<22} {'wall ms':>9} {'cpu ms':>9} {'compile s':>9} {'peak MB':>8}"]
    for r in rec["runners"]:
        if "error" in r:
            lines.append(f"{r['name']:<22} failed: {r['error'][:120]}")
            continue
        mem = (r.get("memory") or {}).get("peak_bytes")
        lines.append(f"{r['name']:<22} {r['wall_ms']:>9.1f} {r['cpu_ms']:>9.1f} {r['compile_s']:>9.1f} "
                     f"{_fmt(mem and mem / 2**20, '8.1f'):>8}")
    ratios = rec["ratios"]
    lines.append(f"{rec['method']} / FM: " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in
                                                       ratios["method_over_fm"].items()))
    lines.append("torch / JAX: " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in ratios["torch_over_jax"].items()))
    lines.append("first-step loss (jax, torch): " + ", ".join(
        f"{o} {_fmt(a, '.6g')} / {_fmt(b, '.6g')}" for o, (a, b) in rec["first_step_loss"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity bench-methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="digits_imf,digits_pmf", help="comma list of TRAIN_PRESETS entries")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--steps", type=positive_int, default=7, help="timed steps per runner (median reported)")
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--threads", type=non_negative_int, default=1, help="torch threads (1: XLA single-threaded too)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runners")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    for name in presets:
        try:
            get_preset(TRAIN_PRESETS, name, "training preset")
        except KeyError as err:
            p.error(str(err.args[0]))
    report = run_methods(presets, args.steps, args.warmup, args.batch, not args.no_compile, args.threads)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def run_methods(presets, steps: int, warmup: int, batch=None, compile_too: bool = True, threads: int = 1) -> dict:
    """Set the thread counts, then `bench_method` per preset; {"environment", "methods"}."""
    if threads == 1:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    import torch

    if threads:
        torch.set_num_threads(threads)
    return {"environment": environment("cpu"),
            "methods": [bench_method(name, steps, warmup, batch, compile_too) for name in presets]}


if __name__ == "__main__":
    sys.exit(main())
