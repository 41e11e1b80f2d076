"""Test aids: sample media, the hostile-media corpus, a fault-injecting S3 proxy and synthetic identities. Used by
tests, benchmarks, ``jobs.sample`` and ``jobs.synthesize``; the product's code never imports this package.
"""
