"""Building blocks of crossmatch, with no Ray in them: one sub-package per domain, each testable on a tensor or a file.

io (storage, committed tables, schemas, the error vocabulary), media (sniffing, decoding, encoding, previews), models
(the registry and the catalogue of model modules), faces, voices, matching, training, style. ``ops.testing`` holds
the test aids (sample media, the hostile corpus, the fault proxy, synthetic identities); the product never imports it.
"""
