"""Test-only sessions with faults that show only in a sequence, and factories naming them as module:function.

The fuzz job takes a session factory by name (plan.CampaignConfig.sequence_session), so that a worker process
for the other backend can make the same planted session.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np

from bnprops.mx.training import SESSIONS, AutogradSession, GluonSession, SymSession


class DoubleUpdateOnSecondStep(AutogradSession):
    """Planted: from the second training step on, the backward runs twice (the moving statistics update twice,
    'add' gradients accumulate twice)."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        result = super().train_step(x, dy)
        self.calls += 1
        if self.calls >= 2:
            with self._semantics():
                self.last.backward(self._head(dy), retain_graph=True)
        return result


class WriteAccumulatesFromSecondStep(SymSession):
    """Planted: from the second training step on, a 'write' gradient buffer is not reset: it accumulates."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        before = {k: g.asnumpy() for k, g in self.grads.items()}
        result = super().train_step(x, dy)
        self.calls += 1
        names = {"bn_gamma": "gamma", "bn_beta": "beta"}
        if self.calls >= 2:
            for name, target in names.items():
                if self.req[target] == "write":
                    self.grads[name][:] = self.grads[name].asnumpy() + before[name]
        return result


def moving_stats_updated_twice(entry: str, **kwargs: Any) -> Any:
    """nd or npx: from the second training step on, the moving statistics update twice."""
    return DoubleUpdateOnSecondStep(**kwargs, **SESSIONS[entry][1])


def write_buffer_not_reset(entry: str, **kwargs: Any) -> Any:
    """sym: from the second training step on, 'write' gradient buffers accumulate."""
    return WriteAccumulatesFromSecondStep(**kwargs)


class RefusesSecondStep(AutogradSession):
    """Planted: the second training step raises, as MXNet refusing a rule would."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        self.calls += 1
        if self.calls >= 2:
            raise RuntimeError("planted: the second step is refused")
        return super().train_step(x, dy)


class KeepsStatisticsOnSecondBackward(AutogradSession):
    """An MXNet without retained-graph-backward-updates-again: a second backward leaves the moving statistics."""

    def backward_again(self, dy: Any) -> Any:
        before = [m.asnumpy() for m in self.moving]
        result = super().backward_again(dy)
        for moving, value in zip(self.moving, before, strict=True):
            moving[:] = value
        return result


def second_step_refused(entry: str, **kwargs: Any) -> Any:
    """nd or npx: the second training step raises."""
    return RefusesSecondStep(**kwargs, **SESSIONS[entry][1])


class ReluDxOffFromSecondStep(AutogradSession):
    """Planted, BatchNormWithReLU through nd: from the second training step on, dx is 0.5% too large."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        result = super().train_step(x, dy)
        self.calls += 1
        if self.calls >= 2:
            with self._semantics():
                self.grads["data"][:] = self.grads["data"].asnumpy() * 1.005
        return result


class ReluWrongMomentumFromSecondStep(GluonSession):
    """Planted, gluon.nn.BatchNormReLU: from the second training step on, the moving statistics move 0.5% too far
    (the update with momentum 1 - 1.005 (1 - momentum))."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        before = {k: self.state()[k] for k in ("moving_mean", "moving_var")}
        result = super().train_step(x, dy)
        self.calls += 1
        if self.calls >= 2:
            for key, param in (("moving_mean", self.layer.running_mean), ("moving_var", self.layer.running_var)):
                after = param.data().asnumpy()
                param.set_data(mx.nd.array(before[key] + (after - before[key]) * 1.005, dtype=self.pdt))
        return result


def relu_dx_off_from_second_step(entry: str, **kwargs: Any) -> Any:
    """nd-relu: from the second training step on, dx is 0.5% off."""
    return ReluDxOffFromSecondStep(**kwargs, **SESSIONS[entry][1])


def relu_wrong_momentum_from_second_step(entry: str, **kwargs: Any) -> Any:
    """gluon-relu: from the second training step on, the moving statistics move with the wrong momentum."""
    return ReluWrongMomentumFromSecondStep(**kwargs, **SESSIONS[entry][1])


class CachedOtherModeBackward(AutogradSession):
    """An MXNet with onednn-backward-cache-ignores-mode (emulated in numpy, apart from its model's code): after a
    backward in one mode, each backward in the other writes dx by the first one's formula on the statistics its
    forward normalised with. ``dx_scale`` and ``dgamma_scale`` plant a 0.5% fault in that step on top."""

    dx_scale = 1.0
    dgamma_scale = 1.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cached: bool | None = None  # the mode of the first backward, whose primitive the cache keeps

    def train_step(self, x: Any, dy: Any) -> Any:
        return self._step(x, dy, True, super().train_step)

    def inference_step(self, x: Any, dy: Any) -> Any:
        return self._step(x, dy, False, super().inference_step)

    def _step(self, x: Any, dy: Any, train: bool, run: Any) -> Any:
        axes = (0, *range(2, x.ndim))
        moving = [m.asnumpy().astype(np.float64) for m in self.moving]
        result = run(x, dy)
        if self.cached is None:
            self.cached = train
        if self.cached == train:
            return result
        x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)
        mean, var = (x64.mean(axis=axes), x64.var(axis=axes)) if train else (moving[0], moving[1])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        invstd = (1 / np.sqrt(var + self.params["eps"])).reshape(shape)
        g = self.arrays["gamma"].asnumpy().astype(np.float64).reshape(shape)
        if train:  # the cached inference primitive: g invstd dy
            dx = g * invstd * dy64
        else:  # the cached training primitive, on the moving statistics
            xhat = (x64 - mean.reshape(shape)) * invstd
            mean_dy, mean_dot = dy64.mean(axis=axes, keepdims=True), (dy64 * xhat).mean(axis=axes, keepdims=True)
            dx = g * invstd * (dy64 - mean_dy - xhat * mean_dot)
        self.grads["data"][:] = (dx * self.dx_scale).astype(self.dtype)
        self.grads["gamma"][:] = self.grads["gamma"].asnumpy() * self.dgamma_scale
        return result


def cached_other_mode(entry: str, **kwargs: Any) -> Any:
    """nd or npx under onednn-backward-cache-ignores-mode."""
    return CachedOtherModeBackward(**kwargs, **SESSIONS[entry][1])
