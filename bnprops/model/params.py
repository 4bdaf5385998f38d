"""How MXNet reads a float operator parameter: Python's repr, parsed by dmlc-core's ParseFloat.

The frontends pass every keyword argument to the C++ operator as a string (``str(value)``, the
shortest repr), and ``dmlc::Parameter`` parses float and double fields with
``dmlc::ParseFloat`` (dmlc-core ``include/dmlc/strtonum.h``), a fast parser that is *not*
correctly rounded: the digits after the point are read as an integer divided by a power of ten in
double, added to the integer part in the field's type, and the exponent is applied by a power of
ten built from float multiplications.  ``momentum=4.740775480516213e-11`` (a float32 value) comes
out one float32 ulp above itself; the moving statistics follow that value, so the oracle must too.
"""

from __future__ import annotations

import functools

import numpy as np

from bnprops.base.float_warnings import ignoring

_MAX_DIGITS = 19  # kStrtofMaxDigits: later digits after the point are ignored


@functools.lru_cache(maxsize=4096)
def parsed(value: float, dtype: str) -> float:
    """``value`` as dmlc::ParseFloat<dtype> reads ``str(value)`` (dtype 'float32' or 'float64'); a pure function of
    its arguments, kept for the values in use (the oracle reads eps and momentum of every case)."""
    ft = np.float32 if dtype == "float32" else np.float64
    text = repr(float(value)).lower()
    if text in ("inf", "-inf", "nan"):
        return float(value)
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    with ignoring("over", "under"):
        result = ft(int(whole or "0"))  # static_cast<FloatType>(uint64)
        if fraction:
            digits = fraction[:_MAX_DIGITS]
            # static_cast<FloatType>(double(val2) / double(pow10)), then a FloatType addition
            result = ft(result + ft(np.float64(int(digits)) / np.float64(10 ** len(digits))))
        if exponent:
            expon = int(exponent)
            frac, expon = expon < 0, abs(expon)
            max_exponent = 38 if ft is np.float32 else 308
            if expon > max_exponent:
                expon = max_exponent
            if expon == max_exponent:
                big, small = (
                    (3.402823466, 1.175494351) if ft is np.float32 else (1.79769313486231570, 2.22507385850720139)
                )
                if not frac and result > ft(big):
                    result = ft(big)
                elif frac and result < ft(small):
                    result = ft(small)
            scale = ft(1.0)
            while expon >= 8:
                scale = ft(scale * ft(np.float32(1e8)))
                expon -= 8
            while expon > 0:
                scale = ft(scale * ft(np.float32(10.0)))
                expon -= 1
            result = ft(result / scale) if frac else ft(result * scale)
    return sign * float(result)
