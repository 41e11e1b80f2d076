"""The report: reading committed runs into what a report shows (``read``), that plain data (``content``), and
drawing it as one self-contained HTML page that reads no storage (``html``).
"""
