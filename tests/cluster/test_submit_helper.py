import pytest

from cluster import submit


def test_attempts_of_one_schedule_date_in_order_and_the_next_id():
    existing = ["nightly-2026-11-22.3", "nightly-2026-11-22", "nightly-2026-11-21", "nightly-2026-11-22.x", "other"]
    attempts = submit.submission_ids("nightly-2026-11-22", existing)
    assert attempts == ["nightly-2026-11-22", "nightly-2026-11-22.3"]
    assert submit.next_id("nightly-2026-11-22", []) == "nightly-2026-11-22"
    assert submit.next_id("nightly-2026-11-22", ["nightly-2026-11-22"]) == "nightly-2026-11-22.2"


def test_the_command_passes_the_dated_run_id_and_ships_no_secrets(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "akid-do-not-ship")  # in the submitter's environment, as usual
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-do-not-ship")
    assert (
        submit.main(["--dry-run", "--date", "2026-01-02", "--", "jobs.pipeline", "s3://a/b", "--output", "s3://c"]) == 0
    )
    line = capsys.readouterr().out
    assert "--submission-id=pipeline-2026-01-02" in line and "--no-wait" in line
    assert line.rstrip().endswith("python -m jobs.pipeline s3://a/b --output s3://c --run-id pipeline-2026-01-02")
    assert "do-not-ship" not in line and "AWS_SECRET_ACCESS_KEY" not in line  # neither the values nor the names


def test_settings_given_with_env_reach_the_driver_only_through_the_entrypoint():
    args = submit.parse_args(["--env", "AWS_ENDPOINT_URL=http://minio:9000", "--", "jobs.manifest", "x"])
    command = submit.submit_command(args, "s", "manifest-today")
    entrypoint = command[command.index("--") + 1 :]
    assert entrypoint[:5] == ["env", "AWS_ENDPOINT_URL=http://minio:9000", "python", "-m", "jobs.manifest"]
    assert not any("AWS_ENDPOINT_URL" in part for part in command[: command.index("--")])  # not in the runtime env


def test_a_run_id_given_is_kept():
    args = submit.parse_args(["--", "jobs.manifest", "x", "--run-id", "mine"])
    assert submit.submit_command(args, "s", "manifest-today")[-2:] == ["--run-id", "mine"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--", "python", "x.py"], "name the job after --"),
        (["--date", "22/11/2026", "--", "jobs.pipeline", "x"], "is not YYYY-MM-DD"),
        (["--name", "a b", "--", "jobs.pipeline", "x"], "--name"),
        (["--env", "no-equals", "--", "jobs.pipeline", "x"], "use NAME=VALUE"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        submit.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
