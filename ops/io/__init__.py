"""I/O: one storage helper for every URI (``storage``), committed Parquet tables (``tables``), every table's schema
(``schemas``) and the one error vocabulary of the suite (``errors``).
"""
