"""``fleet run PLAN``: provision every slot of a plan; see DESIGN.md "Command line".

Exit codes: 0 every device done; 1 at least one device failed (the others still finished);
2 usage or plan error (nothing was sent to any device); 3 interrupted (the journal is consistent,
a re-run resumes).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import anyio
import structlog

from fleet import exitcodes, interrupts
from fleet.errors import FleetError, JournalError, ManifestError, PlanError
from fleet.journal import RunInfo, utc_now
from fleet.journal.files import old_journal_problem
from fleet.logs import configure_logging
from fleet.plan import Plan, load_plan
from fleet.report import check_record, run_document, summary_lines
from fleet.run import RunOptions, SlotStatus, run_plan

__all__ = ["register", "run"]

def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run", help="provision every slot of a plan",
        description="Provision every slot of PLAN concurrently; resumable, journaled, signed.")
    parser.add_argument("plan", type=Path, help="the YAML plan")
    parser.add_argument("--check", action="store_true",
                        help="send only read-only commands and report what a run would do")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (logs stay on stderr)")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="slots worked on at once (default: all)")
    parser.add_argument("--only", action="append", metavar="SLOT", default=[],
                        help="only this slot (by name or port); repeat for more: --only a "
                             "--only b")
    parser.add_argument("--journal", type=Path, metavar="PATH",
                        help="journal file (default: the plan's journal: its journal: key, or "
                             ".fleet/<plan name>.journal.sqlite beside the plan)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run instead of resuming an interrupted one "
                             "(what devices hold is still honoured)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="default: warning when the live table is shown (a terminal), "
                             "info otherwise")
    parser.set_defaults(func=run)


def _refuse(args: argparse.Namespace, lines: list[str], reason: str) -> int:
    """Exit 2 (nothing was sent): the reasons on stderr, and with ``--json`` a document that
    says so, so a caller reading stdout (Ansible) always gets one."""
    for line in lines:
        print(line, file=sys.stderr)
    print(f"fleet run: {reason}; nothing was sent to any device", file=sys.stderr)
    _print_failure_document(args, "\n".join(lines))
    return exitcodes.USAGE


def _print_failure_document(args: argparse.Namespace, error: str) -> None:
    """With ``--json``, the document of a run that never got to the devices."""
    if args.json:
        print(json.dumps({"changed": False, "failed": True, "interrupted": False,
                          "check": bool(args.check), "manifest": None, "error": error,
                          "summary": {"devices": 0}, "devices": []}, indent=2))


def _print_interrupted_document(args: argparse.Namespace, plan: Plan, signum: int) -> int:
    """Exit 3: a signal came before the run started, so nothing was sent."""
    name = signal.Signals(signum).name
    error = f"interrupted by {name} before the run started; nothing was sent to any device"
    print(f"fleet run: {error}; run again to provision", file=sys.stderr)
    if args.json:
        now = utc_now()
        record = check_record(plan, RunInfo(run_id="", started_at=now, resumed=False), {},
                              ended_at=now)  # every planned slot, not started
        document = run_document(record, check=bool(args.check), resumed=False,
                                interrupted=True, manifest=None, manifest_error=None)
        print(json.dumps({**document, "run_id": None, "error": error}, indent=2))
    return exitcodes.INTERRUPTED


def run(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty() and not args.json
    configure_logging(level=args.log_level or ("warning" if tty else "info"))
    if args.concurrency is not None and args.concurrency < 1:
        return _refuse(args, ["fleet run: --concurrency must be at least 1"], "usage error")
    try:
        plan = load_plan(args.plan, only=args.only)
    except PlanError as exc:
        return _refuse(args, exc.errors, "invalid plan")
    if args.journal is None:
        stray = old_journal_problem(plan.journal_path, station=plan.station,
                                    plan_sha256=plan.sha256, plan_path=plan.path)
        if stray is not None:
            return _refuse(args, [f"fleet run: {stray}"], "journal not usable")
    from fleet.run_manifest import prepare_manifest

    try:
        writer = None if args.check else prepare_manifest(plan)
    except ManifestError as exc:
        return _refuse(args, [f"fleet run: {exc}"], "the manifest cannot be signed or written")
    options = RunOptions(check=args.check, concurrency=args.concurrency, journal=args.journal,
                         fresh=args.fresh, partial=bool(args.only))
    table = None
    if tty:  # rich is only needed for the live table
        from fleet.progress import ProgressTable

        table = ProgressTable([SlotStatus(slot=s.name, port=s.port, keys_total=len(s.keys))
                               for s in plan.slots],
                              title=f"fleet {'check' if args.check else 'run'} {plan.station}")

    def on_progress(status: SlotStatus) -> None:
        if table is not None:
            table.update(status)

    from fleet.progress import live_progress

    if (signum := interrupts.received()) is not None:  # the last instant before the run
        return _print_interrupted_document(args, plan, signum)
    try:
        with live_progress(table):
            outcome = anyio.run(lambda: run_plan(plan, options, on_progress=on_progress,
                                                 manifest_writer=writer), backend="asyncio")
    except JournalError as exc:
        return _refuse(args, [f"fleet run: {exc}"], "journal not usable")
    except PlanError as exc:
        return _refuse(args, exc.errors, "invalid plan")
    except FleetError as exc:  # not expected: slots report their own failures
        structlog.get_logger().error("run failed", error=str(exc))
        _print_failure_document(args, str(exc))
        return exitcodes.FAILED
    document = outcome.document()
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print("\n".join(summary_lines(document)))
    return outcome.exit_code
