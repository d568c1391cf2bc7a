"""Data quality and drift: windows of new data compared with the champion's training data.

One module per concern (nothing is re-exported here: import from the module that owns it):

* pure, no service: `drift` (PSI, Jensen-Shannon, KL), `checks` (empty, duplicate,
  outlier, imbalance ratios), `features` (profiles of products and predictions) and
  `signals` (the text and image signals they are built from), `config` (config/quality.yaml,
  typed), `results` (what a check produces), `statistics` (a window's result rows),
  `report` (the HTML report), `errors`;
* with services: `resources` (S3 client, background uploads, language tools, once per
  process), `windows` (which windows to check, their rows from PostgreSQL), `reference`
  (the champion's training data or the lake fallback, cached in S3), `store` (upserts
  into quality_windows / quality_results), `job` (the stage the DAG and the CLI run).
"""
