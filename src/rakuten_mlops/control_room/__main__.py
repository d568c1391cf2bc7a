"""`python -m rakuten_mlops.control_room`: Streamlit's own CLI serving app.py, wherever the
package is installed (local mode's supervisor and compose's `control-room` service).
Server options come from STREAMLIT_* environment variables."""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit.web import cli

APP = Path(__file__).with_name("app.py")

if __name__ == "__main__":
    # MLflow's import takes seconds, Altair's (every st.*_chart) a third of one: paid
    # here, before the server answers its health check, not by the first visitor.
    import altair  # noqa: F401
    import mlflow  # noqa: F401

    sys.argv = ["streamlit", "run", str(APP)]
    sys.exit(cli.main())
