"""Face attributes: heads over frozen embeddings (age, expression, any label), their metrics, and adapters."""
