"""bnprops: property-based tests that prove, or refute, MXNet BatchNorm's gradients.

Data flows one way: strategies -> Case -> runners and oracle -> comparator -> Verdict -> report.

``bnprops.explain(...)`` answers "why do my BatchNorm numbers differ from MXNet's?" (commands.explanation;
imported on first use, so that ``import bnprops`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnprops.commands.explanation import Explanation

__version__ = "0.1.0"


def explain(**kwargs: Any) -> Explanation:
    """Why a user's BatchNorm numbers differ from MXNet's: see bnprops.commands.explanation.explain
    for the arguments."""
    from bnprops.commands.explanation import explain as run

    return run(**kwargs)
