"""The commands: one module per ``python -m jobs.<name>``, each a config dataclass, a ``run`` and a ``main``. A command
imports ``ops``, ``jobs.runtime`` and ``jobs.archive``, never another command; ``pipeline`` and ``find`` compose
commands through their ``JOB``, config and ``run`` only.

    ingest    manifest, sample, synthesize
    embed     embed_faces, embed_voices, attributes
    match     match, calibrate, identities, persons, find, review, export
    train     train_face, train_crossmodal, train_attributes, train_style
    style     stylize
    admin     pipeline, report, show, delete, compact, models
"""
