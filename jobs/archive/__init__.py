"""Algorithms over every item of an archive, by Ray tasks and actors, the driver holding paths and counts. Imports
``ops`` and ``jobs.runtime``.

    search        exact top-K of every query among gallery shards held by actors
    identify      identities enrolled a slice of the uris at a time, probes ranked against them
    verify        1:1 pairs read a chunk at a time, each chunk's embeddings only
    fuse          face and voice evidence together, as calibrated log-LRs
    search_diff   a search after a previous one: only what changed, merged with what did not
    manifest_diff a snapshot after a previous one: only what changed read again
"""
