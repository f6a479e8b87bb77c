"""A trainer's state in neutral form, and back: what `convert-run` carries between the backends.

`PortableState` holds every array of a `TrainState` as NumPy under the torch state-dict
names of the architecture's conversion table: the weights, the EMA weights and AdamW's first
and second moments (arrays of the parameters' shapes, so the table that converts the weights
converts them too), with the number of updates done. One side object per backend:

    side.backend                       the trainer's `TrainBackend` (model, state, checkpoints)
    side.export(state, table, mc)      -> PortableState of its TrainState
    side.build(cfg, model, params, portable, table, mc) -> its TrainState at portable.step

The two AdamW implementations hold the same quantities: optax's `ScaleByAdamState` (mu, nu,
count) and the learning-rate schedule's count, torch's per-parameter exp_avg, exp_avg_sq and
step with the LambdaLR warm-up scheduler at the same step. The update rules agree (AdamW
with decoupled weight decay and bias correction), so a state carried over continues as it
would have on its own backend, to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.convert import jax_to_torch, torch_to_jax

__all__ = ["PortableState", "JaxSide", "TorchSide", "SIDES"]


@dataclass
class PortableState:
    """step: updates done; params, ema, mu (Adam's first moment), nu (its second moment):
    {torch state-dict name: np.ndarray} of the parameters' shapes."""

    step: int
    params: dict
    ema: dict
    mu: dict
    nu: dict


def _numpy_tree(tree):
    import jax

    from jax_meanflow.parallel import host_value

    return jax.tree.map(lambda a: np.asarray(host_value(a)), tree)


class JaxSide:
    """The JAX trainer's TrainState (params, ema_params, optax opt_state, step)."""

    name = "jax"

    @property
    def backend(self):
        from jax_meanflow.train import JaxBackend

        return JaxBackend()

    def template(self, params) -> dict:
        """The params tree as NumPy (what a table is checked against)."""
        return _numpy_tree(params)

    def export(self, state, table, mc) -> PortableState:
        from optax import tree_utils

        step = int(np.asarray(_numpy_tree(state.step)))
        counts = {int(c) for c in _counts(state.opt_state)}
        if counts - {step}:
            raise ValueError(f"the optimizer state counts {sorted(counts)} updates, the train state {step}: "
                             "the checkpoint is inconsistent")
        try:
            mu, nu = (tree_utils.tree_get(state.opt_state, k) for k in ("mu", "nu"))
        except (KeyError, ValueError) as err:
            raise ValueError(f"the optimizer state holds no single Adam state (mu, nu): {err}") from err
        to_torch = lambda tree: jax_to_torch(_numpy_tree(tree), table, mc)  # noqa: E731
        return PortableState(step=step, params=to_torch(state.params), ema=to_torch(state.ema_params),
                             mu=to_torch(mu), nu=to_torch(nu))

    def build(self, cfg, model, params, portable: PortableState, table, mc):
        import jax
        import jax.numpy as jnp
        from optax import tree_utils

        def tree(sd):
            flat = torch_to_jax(sd, table, mc, template=params)
            return jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), params, flat)

        state = self.backend.create_state(cfg, model, params, init_params=tree(portable.params))
        opt_state = tree_utils.tree_set(state.opt_state, mu=tree(portable.mu), nu=tree(portable.nu),
                                        count=jnp.asarray(portable.step, jnp.int32))
        return state.replace(step=jnp.asarray(portable.step, jnp.int32), ema_params=tree(portable.ema),
                             opt_state=opt_state)


def _counts(opt_state) -> list:
    """The `count` fields of an optax state (Adam's and the schedule's)."""
    found = []

    def walk(node):
        if hasattr(node, "_fields"):
            for name in node._fields:
                value = getattr(node, name)
                (found.append(np.asarray(value)) if name == "count" else walk(value))
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)

    walk(opt_state)
    return found


class TorchSide:
    """The PyTorch trainer's TrainState (model, ema_model, AdamW, LambdaLR scheduler, step)."""

    name = "torch"

    @property
    def backend(self):
        from torch_meanflow.train import TorchBackend

        return TorchBackend()

    def template(self, model) -> dict:
        """{state-dict name: shape} of the model."""
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def export(self, state, table, mc) -> PortableState:
        step = int(state.step)
        sd = lambda m: {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}  # noqa: E731
        params, ema = sd(state.model), sd(state.ema_model)
        names = [n for n, _ in state.model.named_parameters()]
        saved = state.optimizer.state_dict()["state"]
        mu, nu = {}, {}
        for i, name in enumerate(names):
            entry = saved.get(i)
            if entry is None:  # no update yet (or a parameter without gradient): moments zero
                if step:
                    raise ValueError(f"the optimizer holds no state for parameter {name!r} after {step} updates")
                mu[name], nu[name] = np.zeros_like(params[name]), np.zeros_like(params[name])
                continue
            if int(float(entry["step"])) != step:
                raise ValueError(f"the optimizer state of {name!r} counts {float(entry['step']):g} updates, the "
                                 f"train state {step}: the checkpoint is inconsistent")
            mu[name] = entry["exp_avg"].detach().cpu().numpy().copy()
            nu[name] = entry["exp_avg_sq"].detach().cpu().numpy().copy()
        for name in set(params) - set(names):  # persistent buffers: no optimizer state on either side
            mu[name], nu[name] = np.zeros_like(params[name]), np.zeros_like(params[name])
        if int(state.scheduler.last_epoch) != step:
            raise ValueError(f"the lr scheduler is at step {state.scheduler.last_epoch}, the train state at {step}: "
                             "the checkpoint is inconsistent")
        return PortableState(step=step, params=params, ema=ema, mu=mu, nu=nu)

    def build(self, cfg, model, params, portable: PortableState, table, mc):
        import torch

        from torch_meanflow.train_state import make_lr_schedule

        state = self.backend.create_state(cfg, model, params, init_params=portable.params)
        with torch.no_grad():
            for k, v in state.ema_model.state_dict().items():
                v.copy_(torch.as_tensor(np.asarray(portable.ema[k])).to(v.dtype))
        step = int(portable.step)
        opt = state.optimizer.state_dict()
        lr = make_lr_schedule(cfg.optim)(step)  # what the scheduler gives the update after `step` updates
        for group in opt["param_groups"]:
            group["lr"] = lr
        if step:
            named = list(state.model.named_parameters())
            opt["state"] = {i: {"step": torch.tensor(float(step), dtype=torch.float32),
                                "exp_avg": torch.as_tensor(np.asarray(portable.mu[n])).to(p.dtype).clone(),
                                "exp_avg_sq": torch.as_tensor(np.asarray(portable.nu[n])).to(p.dtype).clone()}
                            for i, (n, p) in enumerate(named)}
        state.optimizer.load_state_dict(opt)
        sched = state.scheduler.state_dict()
        sched.update(last_epoch=step, _step_count=step + 1, _last_lr=[lr] * len(opt["param_groups"]))
        state.scheduler.load_state_dict(sched)
        state.step = step
        return state


SIDES = {side.name: side for side in (JaxSide(), TorchSide())}
