"""Stages: how a job that composes others (``jobs.pipeline``, ``jobs.find``) runs each as a stage, committed under
``<run id>.<stage>``, keeping a committed stage whose settings are the same until one must run; and the names of
their stages, in order (what ``jobs.delete`` needs, without importing a job).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, launch
from ops.io.root import relative_locations

STAGES = (
    "manifest",
    "voices",
    "faces",
    "calibrate-faces",
    "search-faces",
    "identities-faces",
    "identify-faces",
    "calibrate-voices",
    "search-voices",
    "identities-voices",
    "identify-voices",
    "attributes",
    "crossmatch",
    "report",
)
# jobs.find's stages: a probe listed, embedded, then searched for or verified against one archive item.
FIND_STAGES = (
    "manifest",
    "faces",
    "voices",
    "search-faces",
    "search-voices",
    "verify-faces",
    "verify-voices",
    "report",
)

# Settings that do not change a stage's output: a rerun that differs only in these keeps the stage.
_NOT_OUTPUT = {
    "log_level",
    "shared_paths",
    "pool_size",
    "max_actors",
    "gpus_per_actor",
    "in_process_below",
    "batch_size",
    "shards",
    "gpus_per_shard",
    "query_batch",
}


@dataclass
class Stages:
    """Runs stages in order, keeping those already committed with the same settings until one must run."""

    ctx: JobContext
    restart_from: str | None
    committed: dict[str, dict]
    shared_paths: bool = False  # the pipeline's --shared-paths, for every stage
    done: dict[str, dict] = field(default_factory=dict)  # stage -> {run_id, state, summary}
    _stale: bool = False

    def interrupted(self, stage: str | None) -> str:
        """What an interrupted pipeline leaves: the stages committed, and that the same command resumes."""
        kept = [name for name, entry in self.done.items() if entry["state"] in ("ran", "kept")]
        return (
            f"interrupted{f' in stage {stage}' if stage else ''}: stages committed: {', '.join(kept) or 'none'}; "
            "the same command again keeps them and resumes from the first that is not"
        )

    def run(self, stage: str, module, config: JobConfig) -> dict:
        """Stage ``stage``'s commit marker: the committed one when it is current, else a fresh run's."""
        run_id = f"{self.ctx.run_id}.{stage}"
        config.run_id, config.output, config.shared_paths = run_id, self.ctx.output.uri, self.shared_paths
        self._stale |= stage == self.restart_from
        marker = self.committed.get(run_id)
        current = relative_locations(self.ctx.output, asdict(config))  # as the runs row keeps them
        if marker is not None and not self._stale and _settings(marker.get("config", {})) == _settings(current):
            self.ctx.log.info("stage %s: kept committed run %s", stage, run_id)
            state = "kept"
        else:
            self.ctx.log.info("stage %s: running %s as run %s", stage, module.JOB, run_id)
            try:
                marker = launch(module.JOB, module.run, config)
            except KeyboardInterrupt:
                self.ctx.log.error("pipeline %s", self.interrupted(stage))
                raise
            self._stale, state = True, "ran"  # everything after a stage that ran sees new input
        self.done[stage] = {"run_id": run_id, "state": state, "summary": marker.get("summary", {})}
        return marker

    def settled(self, stage: str) -> dict | None:
        """How the committed run of this pipeline left ``stage`` ({state, reason}), when nothing before it has run
        again since (so the same inputs): what lets a rerun decide without starting Ray."""
        if self._stale or stage == self.restart_from:
            return None
        earlier = (self.committed.get(self.ctx.run_id) or {}).get("stages", {}).get(stage)
        if earlier and earlier["state"] != "skipped" and f"{self.ctx.run_id}.{stage}" not in self.committed:
            return None  # its run was deleted since
        return earlier

    def skip(self, stage: str, reason: str, asked: bool = True) -> None:
        """A stage that cannot run, said as a warning; one nobody asked for (an optional stage without its model) is
        said at INFO: nothing is wrong."""
        self.ctx.log.log(logging.WARNING if asked else logging.INFO, "stage %s: skipped, %s", stage, reason)
        self.done[stage] = {"run_id": None, "state": "skipped", "reason": reason}


def _settings(config: dict) -> dict:
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in plain.items() if k not in _NOT_OUTPUT}
