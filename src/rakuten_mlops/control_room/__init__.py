"""The control room: one Streamlit app over the lake, training, data quality, predictions
and the services, behind a login from .env (`auth`). Each page is a module (`lake`,
`training`, `quality`, `predictions`, `services`); everything they read is in `queries`;
`app` is the script `streamlit run` serves.
"""
