"""The pipeline's stages, in order: each is one of the suite's jobs, committed under ``<run id>.<stage>``.

Kept apart from ``jobs.pipeline`` so that what only needs the names (``jobs.delete``) imports no job.
"""

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
