"""Run by torchrun from tests/test_train_parallel.py: the tiny DiT in float64 from
randomised weights, through the shared loop with the PyTorch backend.

    torchrun --standalone --nproc-per-node 2 tests/workers/ddp_train.py OUT_DIR STEPS [--resume]
        [--no-sync] [--set FIELD=VALUE ...]

--no-sync removes the gradient all-reduce (the negative control of the sync check).
"""
import argparse
import sys

import torch

from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments
from meanflow_common.train_loop import run_training
from torch_meanflow import parallel
from torch_meanflow.params import randomize_params
from torch_meanflow.train import TorchBackend, make_model


def recipe(out_dir: str, steps: int, sets=()):
    return apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={out_dir}", f"steps={steps}", "dtype=float64",
                                                     "ckpt_every=2", *sets])


def random_init(cfg, seed: int = 3) -> dict:
    return {k: v.clone() for k, v in randomize_params(make_model(cfg), seed).state_dict().items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-sync", action="store_true")
    p.add_argument("--set", dest="sets", nargs="*", default=[])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = recipe(args.out_dir, args.steps, args.sets)
    result = run_training(TorchBackend(sync=not args.no_sync), cfg, resume=args.resume, progress=False,
                          init_params=None if args.resume else random_init(cfg))
    print(f"rank done step {result.step} losses {result.losses}", flush=True)
    parallel.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
