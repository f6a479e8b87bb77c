"""What a training task is: the `Task` object both trainers, the config and the evaluator read.

A task is everything a run needs beyond the objective and the optimiser: its data set, the
batch it yields, the network family (a preset table of model configs), what a generated
example looks like, how a sampling request's conditioning is checked, how a trained run
is scored, and the per-backend hooks that build the network and move data to it. The
trainers never look at a task's name; they ask its `Task` object.

The framework parts live with the frameworks. `Task.hooks` maps a backend name ("jax",
"torch") to that backend's hooks object (`jax_meanflow.tasks.TaskHooks`,
`torch_meanflow.tasks.TaskHooks`: the same fields on both sides), given either as the
object itself or as a "package.module:NAME" string that `Task.backend_hooks` imports
only when that backend asks for it. So this module, and every task definition, stays
framework-free (meanflow_common imports neither framework), the JAX trainer never
imports torch (nor the other way round), and a user's task brings its own hooks
without editing either trainer.

Data layout: a batch is a dict of NumPy arrays with leading batch dimension B, holding
at least `batch_keys`; `data_key` names the generated data (what noise e has the shape
of: [B, *data_shape(model_cfg)]), `cond_key` the conditioning a sampler takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from meanflow_common.backend_hooks import resolve_hooks
from meanflow_common.config import MeanFlowConfig

__all__ = ["Task", "EvalOptions"]


def _same_objective(mf: MeanFlowConfig) -> MeanFlowConfig:
    return mf


def _no_info(example: Mapping[str, Any]) -> dict:
    return {}


@dataclass(frozen=True)
class EvalOptions:
    """The evaluator's knobs (`python -m {jax,torch}_meanflow.evaluate`); a task reads those
    that concern it. n_per_class: samples per class (labelled tasks); rollouts, execute:
    closed-loop episodes and actions run per chunk (policies); seed: noise and episodes."""

    n_per_class: int = 100
    rollouts: int = 100
    execute: int = 10
    seed: int = 0


@dataclass(frozen=True, eq=False)
class Task:
    """One training task (see the module doc). Compared by identity; registered by name.

    name: the `TrainConfig.task` it is looked up by (`meanflow_common.tasks.get_task`).
    dataset(seed) -> meanflow_common.data.Dataset whose `keys` include batch_keys.
    presets: {name: model config} (`TrainConfig.model` picks one; frozen dataclasses that
        `config.override` can change); preset_kind: how errors name them ("DiT preset").
    batch_keys: the entries of a batch the model takes; data_key, cond_key: which of them
        is generated, which conditions; float_keys: entries that must be floating point.
    data_shape(model_cfg) -> one generated example's shape (no batch dimension), in the
        data interface's layout; layout: that layout in words, for errors ("NHWC").
    check_batch(model_cfg, batch): ValueError / TypeError naming what does not fit the
        model (the keys and batch sizes are checked before it, float_keys after).
    check_cond(model_cfg, cond, allow_null) -> the sampler's conditioning as a checked
        NumPy array [B, ...] (allow_null: the null class of a labelled task).
    methods: the training methods it supports (names of `meanflow_common.train_methods`).
    method_presets: {method: (presets, preset_kind)} for a method that trains another
        network family than `presets` (digits: the iMF and pMF DiTs); `TrainConfig.model`
        then names a preset of that table.
    objective(mf) -> the MeanFlowConfig the trainers use (a task without class labels
        turns guidance and class dropout off).
    run_info(example batch) -> {fact: JSON value}: what a loader needs besides the config
        to rebuild the model (written to the run's config.json under "data").
    hooks: {backend name: hooks object or "package.module:NAME"} (see the module doc).
    evaluate(sample, num_steps, options, figure, title) -> {metric: float}: scores a
        trained run's `sample(cond, noise=None, num_steps=None)`; figure: a PNG path to
        write (None: no plots). None: the evaluator has nothing to score.
    eval_steps: {method: sampling-step counts the evaluator tries by default}.
    summary_metrics: the record fields a summary table shows by default (the spreads over
        training seeds, `meanflow_common.evaluate.spread`).
    anchors(options) -> [(name, metrics)]: reference rows scored like a run (baselines).
    finish_records(records): adjusts the evaluator's records in place once the anchors are
        in (e.g. ratios to a reference row).
    """

    name: str
    dataset: Callable[[int], Any]
    presets: Mapping[str, Any]
    preset_kind: str
    batch_keys: tuple
    data_key: str
    cond_key: str
    float_keys: tuple
    data_shape: Callable[[Any], tuple]
    layout: str
    check_batch: Callable[[Any, Mapping[str, Any]], None]
    check_cond: Callable[..., Any]
    hooks: Mapping[str, Any]
    methods: tuple = ("meanflow", "flow_matching")
    method_presets: Mapping[str, tuple] = field(default_factory=dict)
    objective: Callable[[MeanFlowConfig], MeanFlowConfig] = _same_objective
    run_info: Callable[[Mapping[str, Any]], dict] = _no_info
    evaluate: Optional[Callable[..., dict]] = None
    eval_steps: Mapping[str, tuple] = field(default_factory=dict)
    summary_metrics: tuple = ()
    anchors: Optional[Callable[[EvalOptions], list]] = None
    finish_records: Optional[Callable[[list], None]] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Task.name must be a non-empty string, got {self.name!r}")
        for key in (self.data_key, self.cond_key, *self.float_keys):
            if key not in self.batch_keys:
                raise ValueError(f"task {self.name!r}: {key!r} is not one of its batch_keys {self.batch_keys}")
        if not self.presets:
            raise ValueError(f"task {self.name!r} has no model presets")
        for method, entry in self.method_presets.items():
            if method not in self.methods:
                raise ValueError(f"task {self.name!r}: method_presets names {method!r}, not one of its methods")
            if not (isinstance(entry, tuple) and len(entry) == 2 and entry[0]):
                raise ValueError(f"task {self.name!r}: method_presets[{method!r}] must be (presets, preset_kind)")

    def presets_for(self, method: str) -> tuple:
        """(preset table, preset kind) of the network `method` trains on this task."""
        return self.method_presets.get(method, (self.presets, self.preset_kind))

    def backend_hooks(self, backend: str):
        """The hooks object of `backend` ("jax" | "torch"), imported on first use when given as
        "package.module:NAME"."""
        return resolve_hooks(f"task {self.name!r}", self.hooks, backend)

    def model_info(self, example: Optional[Mapping[str, Any]] = None,
                   info: Optional[Mapping[str, Any]] = None) -> dict:
        """The facts a backend's `build` hook takes: `info` when given (a saved run's), else
        those of `example` (a batch), else none."""
        if info is not None:
            return dict(info)
        return self.run_info(example) if example is not None else {}
