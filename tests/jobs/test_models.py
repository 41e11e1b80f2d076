import json

from jobs import models


def test_pull_list_show_from_the_command_line(tmp_path, capsys):
    root = str(tmp_path / "models")
    assert models.main(["pull", "silero-vad", "--models", root]) == 0
    assert models.main(["list", "--models", root]) == 0
    listing = capsys.readouterr().out
    assert "silero-vad" in listing and "pulled (" in listing and "ge2e-resemblyzer" in listing
    assert models.main(["show", "silero-vad", "--models", root]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["name"] == "silero-vad" and card["source"]["package"] == "silero-vad"


def test_failures_exit_2_with_the_reason(tmp_path, caplog):
    assert models.main(["show", "ge2e-resemblyzer", "--models", str(tmp_path)]) == 2
    assert "jobs.models pull ge2e-resemblyzer" in caplog.text
    assert models.main(["pull", "nope", "--models", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in caplog.text
