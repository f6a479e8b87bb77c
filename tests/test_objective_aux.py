"""An objective with a frozen second network pair (`Objective.aux`, the hook a perceptual loss
uses): a toy objective, MeanFlow plus a feature distance on the one-step prediction
pred_x = z_t - t u, whose features come from a second network (conv_velocity's, frozen, the
same weights on both sides). It passes; a torch side forming pred_x with the wrong sign
fails on the perceptual term, the loss and the gradients; the auxiliary weights get no
gradient. Float64, tiny networks."""
import dataclasses

import pytest

from examples.conv_velocity import ARCH
from parity import convert
from parity import MEANFLOW, AuxNet, Control, Quantity
from parity.core.harness import random_params, run_variant

LAMBDA = 0.5


def _jax_loss(net, inputs, cfg, aux):
    import jax
    import jax.numpy as jnp

    out = MEANFLOW.jax_loss(net, inputs, cfg)
    x, _, noise, _ = inputs
    t = noise.t.reshape(-1, 1, 1, 1)
    z = (1 - t) * x + t * noise.e
    f = aux["features"]
    b = x.shape[0]
    feats = lambda img: f(img, jnp.full((b,), 0.5, img.dtype), jnp.zeros((b,), img.dtype), jnp.zeros((b,), jnp.int32),
                          False)
    perceptual = jnp.sum((feats(z - t * out["u"]) - jax.lax.stop_gradient(feats(x))) ** 2, axis=(1, 2, 3))
    return {**out, "perceptual": perceptual, "loss": out["loss"] + LAMBDA * jnp.mean(perceptual)}


SIGN = [1.0]  # the control flips it


def _torch_loss(net, inputs, cfg, jvp, aux):
    import torch

    out = MEANFLOW.torch_loss(net, inputs, cfg, jvp)
    x, _, noise, _ = inputs
    t = noise.t.reshape(-1, 1, 1, 1)
    z = (1 - t) * x + t * noise.e
    b = x.shape[0]
    feats = lambda img: aux["features"](img, torch.full((b,), 0.5, dtype=img.dtype), torch.zeros(b, dtype=img.dtype),
                                        torch.zeros(b, dtype=torch.long), False)
    perceptual = ((feats(z - SIGN[0] * t * out["u"]) - feats(x).detach()) ** 2).sum(dim=(1, 2, 3))
    return {**out, "perceptual": perceptual, "loss": out["loss"] + LAMBDA * perceptual.mean()}


class _flipped:
    def __enter__(self):
        SIGN[0] = -1.0

    def __exit__(self, *exc):
        SIGN[0] = 1.0


PERCEPTUAL = dataclasses.replace(
    MEANFLOW, name="meanflow_perceptual", quantities=(*MEANFLOW.quantities, Quantity("perceptual", tol="loss_per_sample")),
    jax_loss=_jax_loss, torch_loss=_torch_loss, no_op_changes={}, aux={"features": AuxNet(ARCH)},
    controls=(Control("pred_x_sign", "pred_x = z_t + t u", objective=_flipped),))


@pytest.fixture(scope="module")
def setup():
    variant = ARCH.default_variants(objective=PERCEPTUAL)[1]  # "no cfg"
    return variant, random_params(ARCH, variant, seed=0)


def test_auxiliary_network_objective_passes_and_its_control_fails(setup):
    variant, params = setup
    honest = run_variant(variant, "float64", params_np=params)
    assert [r.quantity for r in honest] == [*MEANFLOW.names, "perceptual", "grad"]
    assert all(r.passed for r in honest), [r.quantity for r in honest if not r.passed]
    # gradients of the trained network's weights alone, not of the frozen features network's
    assert honest[-1].info["n_params"] == len(convert.jax_to_torch(params, ARCH.table, variant.model_cfg))
    broken = run_variant(variant, "float64", params_np=params, control=PERCEPTUAL.control("pred_x_sign"))
    assert {r.quantity for r in broken if not r.passed} == {"perceptual", "loss", "grad"}


def test_an_auxiliary_network_without_the_call_is_refused():
    from examples.scm import F_CALL

    with pytest.raises(TypeError, match="auxiliary network 'features' is called as F_fn"):
        dataclasses.replace(PERCEPTUAL, aux={"features": AuxNet(ARCH, F_CALL)})
