"""A checkpoint's recorded config against the config it is loaded as: one comparison for all.

A checkpoint whose tensors have the right shapes may still come from another model: 2 heads
instead of 4 change no shape of a DiT, only what the weights mean. So wherever weights are
loaded under a config (the trainers' resume and `load_run`, `parity convert`, `parity
--checkpoint`, `parity debug --checkpoint`, the evaluators), the config recorded beside them
is compared here, and a difference is an error naming every differing field.

Recorded configs: the trainers' checkpoints carry `meta["config"]` (a TrainConfig dict; the
model config is resolved from it), a run folder's config.json has "train" and "model", and
`.safetensors` files written by `parity convert` carry the model config in their metadata
(`MODEL_CONFIG_KEY`). A file with no recorded config is loaded on the caller's word.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, Optional

__all__ = ["MODEL_CONFIG_KEY", "RESUMABLE", "config_diffs", "recorded_model_config", "check_model_config",
           "check_checkpoint_config"]

MODEL_CONFIG_KEY = "meanflow_model_config"  # safetensors metadata entry: the model config as JSON
# TrainConfig fields a checkpoint may be loaded (or resumed) under with another value
RESUMABLE = frozenset({"steps", "ckpt_every", "keep_last", "log_every", "eval_every", "out_dir", "fast_compile",
                       "torch_compile", "devices", "sync_check_steps"})


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_diffs(recorded: Mapping, current: Mapping, ignore: Iterable[str] = ()) -> list[str]:
    """["field: recorded X, now Y", ...] over the flattened dicts (nested keys joined by "."),
    skipping keys whose first part is in `ignore`. Ints and floats compare by value."""
    old, new, skip = _flat(recorded), _flat(current), set(ignore)

    def show(d, k):
        return repr(d[k]) if k in d else "<absent>"

    return [f"{k}: recorded {show(old, k)}, now {show(new, k)}"
            for k in sorted(set(old) | set(new)) if k.split(".")[0] not in skip and old.get(k) != new.get(k)]


def recorded_model_config(record: Any) -> Optional[dict]:
    """The model config dict recorded in a checkpoint's meta ({"config": TrainConfig dict}),
    a run's config.json ({"model": ...}) or a JSON string of the model config; None if absent."""
    if record is None:
        return None
    if isinstance(record, str):
        return json.loads(record)
    if isinstance(record, Mapping) and isinstance(record.get("model"), Mapping):
        return dict(record["model"])
    if isinstance(record, Mapping) and isinstance(record.get("config"), Mapping):
        from meanflow_common.train_config import config_from_dict, model_config

        return dataclasses.asdict(model_config(config_from_dict(record["config"])))
    return None


def check_model_config(recorded: Optional[Mapping], model_cfg, source: str) -> None:
    """ValueError naming every field where the recorded model config differs from `model_cfg`
    (a dataclass); nothing to check when `recorded` is None."""
    if recorded is None:
        return
    mine = dataclasses.asdict(model_cfg)
    foreign = sorted(set(recorded) - set(mine))
    if foreign:
        raise ValueError(f"{source} records a model config with fields {foreign[:6]} that "
                         f"{type(model_cfg).__name__} lacks: it holds another architecture")
    # a field added after the file was written has the default that keeps the old behaviour
    diffs = config_diffs({**dataclasses.asdict(type(model_cfg)()), **recorded}, mine)
    if diffs:
        raise ValueError(f"{source} was written for another {type(model_cfg).__name__} than it is loaded as: "
                         f"{'; '.join(diffs)} (pick the preset and --set fields it was trained with)")


def check_checkpoint_config(meta: Mapping, cfg, path: str) -> None:
    """A trainer checkpoint's `meta["config"]` against the TrainConfig `cfg` it is restored
    under; only the RESUMABLE fields (run length, cadence, out_dir, compile flags) may differ."""
    from meanflow_common.train_config import config_from_dict

    recorded = meta.get("config") if isinstance(meta, Mapping) else None
    if not isinstance(recorded, Mapping):
        return
    # through config_from_dict: fields added since the checkpoint was written take their defaults
    diffs = config_diffs(_resolved(config_from_dict(recorded)), _resolved(cfg), ignore=RESUMABLE)
    if diffs:
        raise ValueError(f"checkpoint {path} was trained with another config than the run it is loaded for: "
                         f"{'; '.join(diffs)}")


def _resolved(cfg) -> dict:
    """A TrainConfig as {its fields but the model overrides, "model": the resolved model config},
    so that a difference is named by the model field (model.num_heads), however it was set."""
    from meanflow_common.train_config import config_to_dict, model_config

    out = config_to_dict(cfg)
    del out["model_overrides"]
    out["model"] = {"preset": cfg.model, **dataclasses.asdict(model_config(cfg))}
    return out
