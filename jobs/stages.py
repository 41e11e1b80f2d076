"""The stages of the jobs that compose others, in order: each is one of the suite's jobs, committed under
``<run id>.<stage>`` (the pipeline's, and ``jobs.find``'s).

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
