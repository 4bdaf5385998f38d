"""A recorded sequence deviation's shortest sequence on fixed values: its configuration, its rules' arguments, a run.

The same batch for every rule: x of shape (3, 2) (or those six values in another shape), dy = x / 2, gamma,
beta and the moving statistics (1.5, 0.25, 0, 1).  The sequence checks' tests replay a deviation's shortest
sequence so (search.sequences builds it as a Sequence), and ``bnprops versions`` probes it in each build
(judging.release_probe): the deviation is present where the state after its rules shows its model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnprops.judging.declarations import SequenceDeviation
from bnprops.judging.state_model import Config, SequenceFailure, Tracker
from bnprops.model.case import param_dtype
from bnprops.mx.runners import IN_PROCESS_BACKEND, kernel_for

X = ((1.0, 2.0), (3.0, -1.0), (0.5, 0.25))


def fixed_config(*, entry: str, dtype: str, **config: object) -> Config:
    """The configuration: two channels, eps 1e-3, momentum 0.9, every request 'write', unless ``config`` says."""
    pdt = param_dtype(dtype)
    fields: dict[str, object] = {
        "entry": entry,
        "dtype": dtype,
        "x_shape": np.asarray(X).shape,
        "eps": 1e-3,
        "momentum": 0.9,
        "fix_gamma": False,
        "use_global_stats": False,
        "grad_req": ("write", "write", "write"),
        "gamma": np.full(2, 1.5, pdt),
        "beta": np.full(2, 0.25, pdt),
        "moving_mean": np.zeros(2, pdt),
        "moving_var": np.ones(2, pdt),
    }
    fields.update(config)
    return Config(**fields)  # type: ignore[arg-type]


def fixed_args(method: str, *, x_shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
    """A rule's arguments (state_model.Tracker's method of that name) on the fixed batch."""
    x = np.asarray(X, dtype=dtype).reshape(x_shape)
    arrays = {"x": x, "dy": (x * 0.5).astype(dtype)}
    by_rule: dict[str, dict[str, Any]] = {
        "train_step": arrays,
        "inference_step": arrays,
        "forward": {"x": x, "train": True},
        "backward_again": {"dy": (-x).astype(dtype)},
        "zero_grad": {},
        "hybridize": {},
    }
    return by_rule[method]


def run_shortest(sd: SequenceDeviation, *, backend: str = IN_PROCESS_BACKEND) -> tuple[str, tuple[str, ...], str]:
    """Run ``sd``'s shortest sequence (float32) here: the kernel its first call takes, the recorded sequence
    deviations whose model held, and the failure's first line ('' where the state followed the model)."""
    if sd.shortest_on is None:
        raise ValueError(f"{sd.id} has no shortest sequence the sequence checks replay (it needs another engine)")
    entry, config = sd.shortest_on
    tracker = Tracker(fixed_config(entry=entry, dtype="float32", **config), backend=backend)
    first = fixed_args("train_step", x_shape=tracker.config.x_shape, dtype="float32")
    kernel = kernel_for(tracker.layer.call_case(first["x"], first["dy"], is_train=True), backend)
    try:
        for method in sd.sequence:
            getattr(tracker, method)(**fixed_args(method, x_shape=tracker.config.x_shape, dtype="float32"))
    except SequenceFailure as failure:
        return kernel, tuple(dict.fromkeys(i for _, i in tracker.known)), str(failure).splitlines()[0]
    return kernel, tuple(dict.fromkeys(i for _, i in tracker.known)), ""
