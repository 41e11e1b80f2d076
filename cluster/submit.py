"""cluster.submit: `ray job submit` for scheduled runs: one run per job name and schedule date, however often the
scheduler fires, its logs followed, its final status as the exit code.

    python -m cluster.submit [--address URL] [--name NAME] [--date YYYY-MM-DD] -- jobs.pipeline ARCHIVE [ARGS...]

The submission id is ``<name>-<date>``. When a submission of that id already SUCCEEDED, nothing is submitted (exit 0);
when one is still PENDING or RUNNING, its logs are followed instead of starting a second; after a FAILED or STOPPED
one, the next attempt is ``<name>-<date>.2`` (then .3, ...). Every attempt passes the job ``--run-id <name>-<date>``,
so a retry of the pipeline resumes from its first incomplete stage rather than starting over.

Exit codes: 0 the job SUCCEEDED, 1 it FAILED or was STOPPED (its message is in the log above), 2 it could not be
submitted (cluster unreachable, bad arguments). On clusters with token authentication (Ray 2.60's default), set
RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cluster import REPO, runtime_env

DONE = {"SUCCEEDED", "FAILED", "STOPPED"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.submit", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster's dashboard URL (default $RAY_ADDRESS or http://127.0.0.1:8265)",
    )
    parser.add_argument("--name", help="the schedule's name (default: the job module's, e.g. pipeline)")
    parser.add_argument("--date", help="the schedule date, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--working-dir", default=str(REPO), help="the code to ship (default: this checkout)")
    parser.add_argument(
        "--packages",
        action="store_true",
        help="ship the pinned requirements too, for nodes without them (ray_cluster.yaml's nodes have them)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set for the job's driver, e.g. AWS_ENDPOINT_URL=http://minio:9000 (crossmatch hands its storage "
        "settings on to every task); never credentials: nodes take those from their AWS chain",
    )
    parser.add_argument("--no-follow", action="store_true", help="submit and return without following the logs")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="give up waiting after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the `ray job submit` command, run nothing")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- jobs.<module> [its arguments]")
    args = parser.parse_args(argv)
    args.job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not args.job or not args.job[0].startswith("jobs."):
        parser.error("name the job after --, e.g. -- jobs.pipeline s3://bucket/archive --output s3://bucket/results")
    for setting in args.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", setting):
            parser.error(f"--env {setting!r}: use NAME=VALUE")
    args.name = args.name or args.job[0].removeprefix("jobs.").replace("_", "-")
    if not _NAME.match(args.name):
        parser.error(f"--name {args.name!r}: use up to 64 letters, digits, '_' or '-'")
    args.date = args.date or datetime.now(UTC).strftime("%Y-%m-%d")
    try:
        datetime.strptime(args.date, "%Y-%m-%d")
    except ValueError:
        parser.error(f"--date {args.date!r} is not YYYY-MM-DD")
    return args


def submission_ids(base: str, existing: list[str]) -> list[str]:
    """The ids of earlier attempts at ``base`` (``base``, ``base.2``, ...), in attempt order."""
    attempts = {1 if sid == base else int(sid[len(base) + 1 :]) for sid in existing if _is_attempt(sid, base)}
    return [base if n == 1 else f"{base}.{n}" for n in sorted(attempts)]


def _is_attempt(sid: str, base: str) -> bool:
    return sid == base or (sid.startswith(base + ".") and sid[len(base) + 1 :].isdigit())


def next_id(base: str, attempts: list[str]) -> str:
    return base if not attempts else f"{base}.{len(attempts) + 1}"


def submit_command(args: argparse.Namespace, submission_id: str, run_id: str) -> list[str]:
    """The `ray job submit` command line of one attempt."""
    job = list(args.job)
    if "--run-id" not in job:
        job += ["--run-id", run_id]
    env = runtime_env(args.working_dir, packages=args.packages)
    working_dir = env.pop("working_dir")
    return [
        _ray(),
        "job",
        "submit",
        f"--address={args.address}",
        f"--submission-id={submission_id}",
        f"--working-dir={working_dir}",
        f"--runtime-env-json={json.dumps(env)}",
        "--no-wait",
        "--",
        *(["env", *args.env] if args.env else []),
        "python",
        "-m",
        *job,
    ]


def _ray() -> str:
    beside = Path(sys.executable).with_name("ray")  # the ray of this environment, whatever PATH says
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = f"{args.name}-{args.date}"
    if args.dry_run:
        print(shlex.join(submit_command(args, base, base)))
        return 0
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(args.address)
        jobs = {j.submission_id: j for j in client.list_jobs() if j.submission_id}
    except Exception as exc:  # noqa: BLE001 - connection, auth and version errors all mean the same to a scheduler
        _say(f"cannot reach the Ray cluster at {args.address}: {exc}")
        return 2
    attempts = submission_ids(base, list(jobs))
    statuses = {sid: str(jobs[sid].status.value) for sid in attempts}
    if any(s == JobStatus.SUCCEEDED.value for s in statuses.values()):
        _say(f"{base} already succeeded ({', '.join(f'{k} {v}' for k, v in statuses.items())}): nothing submitted")
        return 0
    running = [sid for sid, status in statuses.items() if status not in DONE]
    if running:
        sid = running[-1]
        _say(f"{sid} is already {statuses[sid]}: following it instead of submitting again")
    else:
        sid = next_id(base, attempts)
        if attempts:
            _say(f"earlier attempts {', '.join(f'{k} {v}' for k, v in statuses.items())}: submitting {sid}")
        done = subprocess.run(submit_command(args, sid, base), text=True, capture_output=True)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            _say(f"`ray job submit` of {sid} failed (exit {done.returncode})")
            return 2
    if args.no_follow:
        return 0
    subprocess.run([_ray(), "job", "logs", f"--address={args.address}", "--follow", sid])
    status = _final_status(client, sid, args.timeout)
    _say(f"{sid}: {status}")
    return 0 if status == JobStatus.SUCCEEDED.value else 1


def _final_status(client, sid: str, timeout: float) -> str:
    """The job's terminal status (log following ends with the job; the status may lag it by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(sid).value)
        if status in DONE or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def _say(text: str) -> None:
    print(f"cluster.submit: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
