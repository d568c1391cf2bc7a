"""The prediction service: the champion model behind FastAPI, with auth, metrics and an
inference log (`python -m rakuten_mlops serve`; `make up` runs it in local mode).

Modules: `app` (the application factory and routes), `model` (loading, hot swap and the
one adapter between request texts and the model), `schemas` (request/response models),
`auth` (API keys and roles), `metrics` (Prometheus), `limits` (request size),
`inference_log` (the PostgreSQL writer), `batch` (offline predictions for the lake's
products), `client` (`rakuten-mlops demo-predict`).
"""
