"""Run in a fresh process by tests/test_train_determinism.py: `python seed_train.py BACKEND
OUT SEEDS [FIELD=VALUE ...]` trains the tiny digits DiT (float32) from randomised weights once
per training seed in SEEDS (comma-separated), each in its own folder under OUT, and writes the
final weights and EMA weights of each to OUT/weights.npz (keys "s<seed>/<index>"). Prints one
JSON object: {"runtime": config.json's runtime record of the first seed's run}.
"""
import json
import os
import sys

import numpy as np

from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments


def main(backend: str, out: str, seeds: list, sets: list) -> dict:
    if backend == "torch":
        from torch_meanflow import train as T
        from torch_meanflow.params import randomize_params

        def init(cfg):
            return randomize_params(T.make_model(cfg), 3).state_dict()

        def weights(state):
            return [t.detach().numpy() for m in (state.model, state.ema_model) for t in m.state_dict().values()]
    else:
        import jax

        from jax_meanflow import train as T
        from jax_meanflow.params import randomize_params
        from meanflow_common.data import batch_at
        from meanflow_common.tasks import get_dataset

        def init(cfg):
            _, params = T.make_model(cfg, batch_at(get_dataset("digits", 0), 0, 0, cfg.batch_size))
            return randomize_params(params, 3)

        def weights(state):
            return [np.asarray(a) for a in jax.tree.leaves((state.params, state.ema_params))]
    arrays = {}
    for seed in seeds:
        cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={os.path.join(out, f's{seed}')}", f"seed={seed}",
                                                         *sets])
        result = T.train(cfg, init_params=init(cfg), progress=False)
        arrays.update({f"s{seed}/{i}": w for i, w in enumerate(weights(result.state))})
    np.savez(os.path.join(out, "weights.npz"), **arrays)
    with open(os.path.join(out, f"s{seeds[0]}", "config.json")) as f:
        return {"runtime": json.load(f)["runtime"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")], sys.argv[4:])))
