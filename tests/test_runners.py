"""The symbolic runner calls BatchNorm the way the forum thread does, and reports what MXNet returns."""

from __future__ import annotations

import mxnet as mx
import numpy as np

from bnprops.mx.runners import run_symbolic
from tests.helpers import one_channel_case
from tests.test_oracle import FORUM_T, FORUM_X, forum_case


def forum_graph(*, fix_gamma: bool) -> tuple[np.ndarray, np.ndarray]:
    """The thread's own code: BatchNorm under LinearRegressionOutput, everything zero-initialised."""
    net = mx.sym.LinearRegressionOutput(
        mx.sym.BatchNorm(mx.sym.Variable("data"), fix_gamma=fix_gamma, name="bn"), mx.sym.Variable("softmax_label")
    )
    exe = net.simple_bind(ctx=mx.cpu(), data=(2, 1), softmax_label=(2, 1))
    exe.arg_dict["data"][:] = np.asarray(FORUM_X).reshape(2, 1)
    exe.arg_dict["softmax_label"][:] = FORUM_T.reshape(2, 1)
    exe.forward(is_train=True)
    exe.backward()
    return exe.grad_dict["bn_beta"].asnumpy(), exe.grad_dict["bn_gamma"].asnumpy()


def test_the_forum_graph_gives_the_threads_numbers_and_the_runner_agrees() -> None:
    for fix_gamma, dgamma in ((True, 0.0), (False, -4.1237984)):
        dbeta_forum, dgamma_forum = forum_graph(fix_gamma=fix_gamma)
        assert abs(dbeta_forum[0] - -1.0274855) < 1e-6 and abs(dgamma_forum[0] - dgamma) < 1e-6
        case, _ = forum_case(fix_gamma=fix_gamma)
        # LinearRegressionOutput's head is MXNet's own y minus the label, in float32.
        y = run_symbolic(case)["y"]
        out = run_symbolic(case.with_(dy=(y - FORUM_T.astype(np.float32).reshape(2, 1)).astype(np.float32)))
        assert out["dbeta"].tobytes() == dbeta_forum.tobytes()
        assert out["dgamma"].tobytes() == dgamma_forum.tobytes()


def test_fix_gamma_writes_ones_into_gamma_during_forward() -> None:
    out = run_symbolic(one_channel_case([1.0, 2.0, 4.0], dtype="float32", fix_gamma=True))
    assert out["gamma"].tolist() == [1.0]


def test_a_reused_executor_starts_each_case_from_the_cases_own_state() -> None:
    first = one_channel_case([1.0, 2.0, 4.0], dtype="float32", fix_gamma=True)
    again = run_symbolic(first)
    run_symbolic(first.with_(fix_gamma=True, moving_mean=np.full(1, 5.0, np.float32)))
    assert run_symbolic(first)["moving_mean"].tobytes() == again["moving_mean"].tobytes()
