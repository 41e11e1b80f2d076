"""Models: the registry core (``registry``: sources, pulling, storing, verified loading) and the ``catalogue``, the one
module that knows every model module and builds a ready module from a loaded model.
"""
