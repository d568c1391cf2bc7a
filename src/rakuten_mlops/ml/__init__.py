"""Classical ML: dataset versions, text features, training, evaluation, the promotion gate
and the registry. Pure modules take frames and return results; `stages` is the one that
touches MLflow, PostgreSQL and S3 (see docs/architecture.md)."""
