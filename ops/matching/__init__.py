"""Matching: exact top-K search, verification metrics, trainable heads, embedding sets read from committed tables and
the names of items (a face, a speech segment, a source).
"""
