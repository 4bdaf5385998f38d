"""Probe: mx.nd.contrib.SyncBatchNorm on two CPU contexts against a float64 global-batch BatchNorm.

Run: python sync_batchnorm.py   (mxnet 1.9.1 and numpy only; each scenario runs in a child process
with a timeout, because SyncBatchNorm waits at a barrier and a mismatch hangs instead of failing).
"""

import os
import subprocess
import sys

TIMEOUT = 30


def scenario(name):
    import mxnet as mx
    import numpy as np

    eps, mom = 1e-3, 0.9
    rng = np.random.RandomState(0)
    ctxs = [mx.cpu(0), mx.cpu(1)]

    def run(
        xs,
        key="k",
        ndevs=(2, 2),
        keys=None,
        fix_gamma=False,
        use_global_stats=False,
        dtype="float32",
        backward=True,
        train=True,
    ):
        c = xs[0].shape[1]
        gamma0 = np.array([1.5, 0.5, 2.0][:c])
        beta0 = np.array([0.1, -0.2, 0.3][:c])
        ws = [rng.randn(*x.shape) for x in xs]
        ins, ys = [], []
        with mx.autograd.record(train_mode=train):
            for i, (x, ctx) in enumerate(zip(xs, ctxs)):
                a = [mx.nd.array(v, ctx=ctx, dtype=dtype) for v in (x, gamma0, beta0)]
                mm = mx.nd.zeros(c, ctx=ctx, dtype=dtype)
                mv = mx.nd.ones(c, ctx=ctx, dtype=dtype)
                for v in a:
                    v.attach_grad()
                y = mx.nd.contrib.SyncBatchNorm(
                    *a,
                    mm,
                    mv,
                    eps=eps,
                    momentum=mom,
                    fix_gamma=fix_gamma,
                    use_global_stats=use_global_stats,
                    ndev=ndevs[i],
                    key=(keys[i] if keys else key),
                )
                ins.append((a, mm, mv))
                ys.append((y * mx.nd.array(ws[i], ctx=ctx, dtype=dtype)).sum())
        if backward:
            mx.autograd.backward(ys)
        mx.nd.waitall()
        return ins, ws, gamma0, beta0

    def oracle(xs, ws, gamma, beta, means_of_means=False):
        x = np.concatenate(xs).astype(np.float64)
        dy = np.concatenate(ws)
        ax = (0,) + tuple(range(2, x.ndim))
        sh = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=ax)
        var = x.var(axis=ax)
        if means_of_means:  # what the merge computes: the average of per-device E[x], E[x^2]
            mean = np.mean([v.mean(axis=ax) for v in xs], axis=0)
            var = np.mean([(v.astype(np.float64) ** 2).mean(axis=ax) for v in xs], axis=0) - mean**2
        xhat = (x - mean.reshape(sh)) / np.sqrt(var.reshape(sh) + eps)
        m = x.size / x.shape[1]
        g = gamma.reshape(sh)
        dx = (
            g
            / np.sqrt(var.reshape(sh) + eps)
            * (dy - dy.mean(axis=ax).reshape(sh) - xhat * (dy * xhat).mean(axis=ax).reshape(sh))
        )
        return dict(mean=mean, var=var, xhat=xhat, dy=dy, dx=dx, m=m, ax=ax)

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    if name == "equal":
        xs = [rng.randn(3, 2, 2) * 2 + 1, rng.randn(3, 2, 2) * 2 + 1]
        ins, ws, gamma, beta = run(xs)
        o = oracle(xs, ws, gamma, beta)
        dx = np.concatenate([a[0].grad.asnumpy() for a, _, _ in ins])
        print("equal batches (3+3 rows, C=2, L=2), float32:")
        print("  dx vs float64 global-batch oracle: max rel err %.2e" % rel(dx, o["dx"]))
        n0 = xs[0].shape[0]
        for i, (a, mm, mv) in enumerate(ins):
            sl = slice(0, n0) if i == 0 else slice(n0, None)
            dyi, xhi = o["dy"][sl], o["xhat"][sl]
            print(
                "  device %d dgamma %s | own-slice partial %s | global %s"
                % (
                    i,
                    np.round(a[1].grad.asnumpy(), 5),
                    np.round((dyi * xhi).sum(axis=o["ax"]), 5),
                    np.round((o["dy"] * o["xhat"]).sum(axis=o["ax"]), 5),
                )
            )
            print(
                "  device %d dbeta  %s | own-slice partial %s"
                % (i, np.round(a[2].grad.asnumpy(), 5), np.round(dyi.sum(axis=o["ax"]), 5))
            )
            print(
                "  device %d moving_mean %s = 0.1*global mean %s; moving_var %s = 0.9+0.1*biased var %s"
                % (
                    i,
                    np.round(mm.asnumpy(), 6),
                    np.round(0.1 * o["mean"], 6),
                    np.round(mv.asnumpy(), 6),
                    np.round(0.9 + 0.1 * o["var"], 6),
                )
            )
    elif name == "unequal":
        xs = [rng.randn(2, 1, 2) + 5.0, rng.randn(6, 1, 2) - 1.0]
        ins, ws, gamma, beta = run(xs)
        dx = np.concatenate([a[0].grad.asnumpy() for a, _, _ in ins])
        mm = ins[0][1].asnumpy() / 0.1
        g, mom_ = oracle(xs, ws, gamma, beta), oracle(xs, ws, gamma, beta, means_of_means=True)
        print("unequal batches (2 rows + 6 rows, C=1), float32:")
        print(
            "  batch mean used (moving_mean/0.1): %.6f; global mean %.6f; mean of per-device means %.6f"
            % (mm[0], g["mean"][0], mom_["mean"][0])
        )
        print("  dx vs global-batch oracle: max rel err %.2e" % rel(dx, g["dx"]))
    elif name == "cancellation":
        xs = [rng.randn(4, 1, 8) * 1e-2 + 300.0, rng.randn(4, 1, 8) * 1e-2 + 300.0]
        ins, ws, gamma, beta = run(xs)
        o = oracle(xs, ws, gamma, beta)
        var = (ins[0][2].asnumpy()[0] - 0.9) / 0.1
        with mx.autograd.record():  # plain BatchNorm on the whole batch, training mode
            ref = mx.nd.BatchNorm(
                mx.nd.array(np.concatenate(xs)),
                mx.nd.ones(1),
                mx.nd.zeros(1),
                mx.nd.zeros(1),
                mx.nd.ones(1),
                eps=eps,
                fix_gamma=False,
                output_mean_var=True,
            )
        print("cancellation: x = 300 + 0.01*N(0,1), 2 devices x 32 elements, float32:")
        print(
            "  true var %.6e; SyncBatchNorm var (moving_var - 0.9)/0.1 = %.6e; BatchNorm var %.6e (its output is 1/sqrt(var+eps))"
            % (o["var"][0], var, 1.0 / ref[2].asnumpy()[0] ** 2 - eps)
        )
        with mx.autograd.record():
            ys = [
                mx.nd.contrib.SyncBatchNorm(
                    mx.nd.array(x, ctx=c),
                    mx.nd.ones(1, ctx=c),
                    mx.nd.zeros(1, ctx=c),
                    mx.nd.zeros(1, ctx=c),
                    mx.nd.ones(1, ctx=c),
                    eps=eps,
                    ndev=2,
                    key="c2",
                    output_mean_var=True,
                )
                for x, c in zip(xs, ctxs)
            ]
        print(
            "  SyncBatchNorm var output %.6e; NaN in y: %d of %d"
            % (ys[0][2].asnumpy()[0], sum(int(np.isnan(y[0].asnumpy()).sum()) for y in ys), 64)
        )
    elif name == "flags":
        xs = [rng.randn(2, 2, 2), rng.randn(2, 2, 2)]
        ins, ws, gamma, beta = run(xs, fix_gamma=True)
        print(
            "fix_gamma=True: gamma array after forward %s (was %s); dgamma %s"
            % (ins[0][0][1].asnumpy(), gamma[:2], ins[0][0][1].grad.asnumpy())
        )
        ins, ws, gamma, beta = run(xs, use_global_stats=True)
        x = xs[0]
        y_expect_dx = ws[0] * gamma[:2].reshape(1, -1, 1) / np.sqrt(1 + eps)
        print(
            "use_global_stats=True: dx = dy*gamma/sqrt(moving_var+eps): max abs err %.1e; moving_mean %s"
            % (np.abs(ins[0][0][0].grad.asnumpy() - y_expect_dx).max(), ins[0][1].asnumpy())
        )
        ins, ws, gamma, beta = run(xs, backward=False)
        print("training forward without backward: moving_mean %s (updated only in Backward)" % ins[0][1].asnumpy())
    elif name == "float64":
        xs = [rng.randn(2, 2, 2), rng.randn(2, 2, 2)]
        run(xs, dtype="float64")
        print("float64 ran")
    elif name == "ndev_mismatch":
        run([rng.randn(2, 1, 2), rng.randn(2, 1, 2)], ndevs=(2, 1))
        print("ndev (2, 1) returned")
    elif name == "key_mismatch":
        run([rng.randn(2, 1, 2), rng.randn(2, 1, 2)], keys=("a", "b"))
        print("keys (a, b) returned")
    elif name == "one_device":
        x = [rng.randn(3, 1, 2)]
        ctxs[:] = [mx.cpu(0)]
        ins, ws, gamma, beta = run(x, ndevs=(1,))
        o = oracle(x, ws, gamma, beta)
        print("ndev=1 on one context: dx max rel err vs oracle %.2e" % rel(ins[0][0][0].grad.asnumpy(), o["dx"]))


def child(name, engine, workers=2):
    env = dict(os.environ, MXNET_ENGINE_TYPE=engine, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS=str(workers))
    try:
        p = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=TIMEOUT)
        err = [l.strip() for l in p.stderr.splitlines() if "Error" in l or "Check failed" in l][-1:]
        return p.stdout.rstrip() + (
            "%s: [%s] exit %d %s" % (name, engine, p.returncode, " ".join(err)[:200]) if p.returncode else ""
        )
    except subprocess.TimeoutExpired:
        return "%s: [%s, %d worker threads] HUNG (killed after %ds)" % (name, engine, workers, TIMEOUT)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        scenario(sys.argv[1])
        sys.exit(0)
    threaded = "ThreadedEnginePerDevice"
    for name in ["equal", "unequal", "cancellation", "flags", "float64", "ndev_mismatch", "key_mismatch"]:
        print(child(name, threaded))
    print("-- ThreadedEnginePerDevice with MXNET_CPU_WORKER_NTHREADS=1 (one worker thread per CPU device):")
    print(child("equal", threaded, workers=1))
    print("-- NaiveEngine (bnprops' default):")
    print(child("one_device", "NaiveEngine"))
    print(child("equal", "NaiveEngine"))
