"""Re-clustering commands: one run (``recluster``, a CronJob's) or the scheduler loop in the foreground."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from clio_stream.cli.options import add_facets_arg, add_model_args, add_stream_args, facets_from_names, service_settings
from clio_stream.cli.signals import stop_on_signals
from clio_stream.settings import ClioSettings

if TYPE_CHECKING:
    from clio_stream.living.job import ReclusterReport
    from clio_stream.living.run_metrics import RunOutcome
    from clio_stream.living.scheduler import Triggers

log = logging.getLogger(__name__)


def recluster_settings(args: argparse.Namespace) -> ClioSettings:
    from clio_stream.living.service import effective_settings

    return effective_settings(service_settings(args))


def triggers_from_args(args: argparse.Namespace) -> Triggers:
    from clio_stream.living.scheduler import Triggers

    return Triggers.from_settings(recluster_settings(args), interval_s=args.interval,
                                  new_fraction=args.new_fraction, min_points=args.min_points)


def cmd_recluster(args: argparse.Namespace) -> int:
    """One re-clustering run: 0 when published or skipped (another run holds the lock, nothing to do), 1 on error.

    Pending user deletions are carried out first, due or not: this job owns the publish directory (k8s CronJob).
    With ``metrics_pushgateway_url`` the run's metrics are pushed when it ends, whatever the outcome.
    """
    import time

    from clio_stream.living.run_metrics import RunOutcome, push_run_metrics

    settings = recluster_settings(args)
    t0 = time.monotonic()
    outcome, report = RunOutcome.FAILED, None
    try:
        outcome, report = _recluster_once(args, settings)
    except ValueError:
        raise  # configuration errors: exit status 2 from main()
    except Exception:  # noqa: BLE001 - a job's failure is its exit status
        log.exception("re-clustering failed")
    finally:
        if settings.metrics_pushgateway_url:
            push_run_metrics(settings.metrics_pushgateway_url, outcome, time.monotonic() - t0, report)
    return 1 if outcome is RunOutcome.FAILED else 0


def _recluster_once(args: argparse.Namespace, settings: ClioSettings) -> tuple[RunOutcome, ReclusterReport | None]:
    from clio_stream.living.run_metrics import RunOutcome
    from clio_stream.living.scheduler import due
    from clio_stream.living.service import ReclusterService

    with ReclusterService(settings, facets=facets_from_names(args.facets)) as service:
        service.process_deletions()
        reason = "manual"
        if args.if_due:
            reason = due(service.snapshot(), triggers_from_args(args))
            if reason is None:
                log.info("re-clustering not due (no trigger fired); nothing to do")
                return RunOutcome.NOT_DUE, None
        report = service.run(reason)
    if report is None:
        log.info("re-clustering skipped (another run holds the lock, or nothing is stored yet)")
        return RunOutcome.SKIPPED, None
    return RunOutcome.PUBLISHED, report


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run the re-clustering scheduler in the foreground until SIGTERM / SIGINT."""
    from clio_stream.living.service import ReclusterService

    settings = recluster_settings(args)
    with ReclusterService(settings, facets=facets_from_names(args.facets)) as service:
        triggers = triggers_from_args(args)
        sched = service.scheduler(triggers, poll_s=args.poll)
        stop_on_signals(sched.stop, "stopping after the run in hand")
        from clio_stream.living.scheduler_metrics import serve_scheduler_metrics

        server = serve_scheduler_metrics(settings, sched) if settings.metrics_port is not None else None
        log.info("re-clustering scheduler: every %.0f s, on %.0f%% new points, on drift or %.0f%% outliers, "
                 "or on request (facet %s)", triggers.interval_s, 100 * triggers.new_fraction,
                 100 * triggers.outlier_rate, service.trigger_facet)
        try:
            sched.run()  # this thread's loop, in the foreground
        finally:
            if server is not None:
                server.stop()
    return 0


def _add_trigger_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--interval", type=float, default=None,
                    help="seconds between scheduled runs (default: settings recluster_interval_s, 900)")
    sp.add_argument("--new-fraction", type=float, default=None,
                    help="re-cluster when new points reach this fraction of those at the last run "
                         "(default: settings recluster_new_fraction, 0.10)")
    sp.add_argument("--min-points", type=int, default=None,
                    help="no clustering before this many points (default: settings recluster_min_points, 30)")
    add_facets_arg(sp)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("recluster", help="re-cluster the stored points once and publish a new version")
    sp.add_argument("--if-due", action="store_true",
                    help="only when a scheduler trigger fires (for a CronJob); the trigger flags below apply")
    _add_trigger_args(sp)
    add_stream_args(sp)
    add_model_args(sp)
    sp.set_defaults(func=cmd_recluster)

    sp = sub.add_parser("scheduler", help="run the re-clustering scheduler in the foreground (until SIGTERM)")
    sp.add_argument("--poll", type=float, default=5.0, help="seconds between trigger checks")
    _add_trigger_args(sp)
    add_stream_args(sp)
    add_model_args(sp)
    sp.set_defaults(func=cmd_scheduler)
