"""One campaign end to end: targets, workers, the report and the database index, written into the output folder."""

from __future__ import annotations

import datetime
import time

from bnprops.base import lifetime
from bnprops.fuzzing import lifecycle_findings, member_findings, plan, worker
from bnprops.fuzzing.report import folder, merge
from bnprops.fuzzing.report.model import Report
from bnprops.mx import mxversion
from bnprops.mx.backends import runner_for


def run(
    config: plan.CampaignConfig,
    *,
    runner_factory: plan.RunnerFactory = runner_for,
    progress: plan.ProgressFn | None = None,
) -> Report:
    """Run ``config`` and write its report into ``config.out``; Ctrl-C or SIGTERM ends the run early but still
    writes it (stop reason "interrupted" or "terminated").

    ``runner_factory`` maps (entry, backend) to a runner; tests pass one that plants a fault.
    """
    targets, skipped = plan.resolve_targets(config, runner_factory)
    if config.member_every:  # the family members' targets that cannot run here, with the reason
        skipped += member_findings.skipped(config.members, config.backends)
    if config.lifecycle_every:  # the life-cycle checks this release lacks an API for: noted, not failed
        skipped += lifecycle_findings.lacking()
    previous, unreplayable = plan.load_index(config.out)  # a broken index is a usage error before anything runs
    config.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.time()
    deadline = t0 + config.time_limit if config.time_limit is not None else None
    try:
        with lifetime.terminating():  # SIGTERM stops the campaign as Ctrl-C does: the report is still written
            results, interrupted = worker.run_workers(
                config, targets=targets, runner_factory=runner_factory, deadline=deadline, progress=progress
            )
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    result = merge.from_workers(
        config, results, started=started, elapsed_s=time.time() - t0, skipped=skipped, interrupted=interrupted
    )
    # Which MXNet and oneDNN ran: the same code can deviate in one release and not in another.
    result.parameters.update({f"{name}_version": v for name, v in mxversion.environment().items()})
    folder.write(result, config.out, baseline=config.baseline)
    # The database keeps what was shrunk or replayed this run; signatures not selected this time stay listed (unless
    # their examples no longer decode).
    selected = {(e, b) for e, b in targets}
    kept = [s for s in previous if (s.entry, s.backend) not in selected or s.dtype not in config.dtypes]
    kept = [] if unreplayable else kept
    stored = [e.signature for e in result.new if e.reduction in ("shrunk", "partly shrunk", "replayed")]
    plan.write_index(config.out, kept + stored)
    return result
