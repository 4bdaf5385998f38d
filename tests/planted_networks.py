"""Test-only in-network runners with planted faults, named as module:function for
bnprops.judging.in_network's runner."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bnprops.mx.network_kernel import run_in_network


def dx_one_element_off(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The real network, but one element of BatchNorm's dx is nudged by one part in a thousand."""
    out = run_in_network(spec)
    dx = out["dx"].copy()
    dx.reshape(-1)[dx.size // 2] *= np.asarray(1.001, dtype=dx.dtype)
    out["dx"] = dx
    return out


def moving_var_one_ulp_off(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The real network, but one channel's moving variance is one ulp off: only the exact rule sees it."""
    out = run_in_network(spec)
    out["moving_var"] = out["moving_var"].copy()
    value = out["moving_var"][0]
    out["moving_var"][0] = np.nextafter(value, value.dtype.type(np.inf))
    return out


def raises(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    raise RuntimeError("planted: the producer refused this chain")


def aborts(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """What a segfault inside MXNet does to the process running it."""
    os.abort()
