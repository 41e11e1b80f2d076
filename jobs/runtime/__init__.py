"""How any job runs on Ray, whatever it does: the machinery the commands in ``jobs/`` share. Imports ``ops`` only.

launch       a job's run: its run id, logging, exit codes (``run_job``, ``launch``, ``JobContext``)
cli          a job's command line, generated from its config dataclass (``JobConfig``)
options      option groups several configs share, each defined once (``ModelsRoot``, ``ManifestInput``, ...)
cluster      Ray started or joined, sources cut into shards, the pool of model actors (``ActorOptions``)
output       how every job writes and commits its run (``JobOutput``, ``RowWriter``)
accounting   every source ends as one outcome: planned, staged, settled, checked (``Ledger``)
gather       a Ray task per part, their small summaries added up on the driver
slices       how work is cut: bucket ranges of the uris, even parts, blocks of rows, items balanced by weight
reuse        a source embedded before with the same models and settings is copied, not embedded again
progress     progress lines for long work
stages       a job that composes others (pipeline, find) runs each as a resumable stage
trainer      the Ray Train skeleton the training jobs share
"""
