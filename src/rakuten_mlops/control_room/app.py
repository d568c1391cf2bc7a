"""The script `streamlit run` serves (rakuten_mlops.localstack.control_room starts it):
the login, then the pages. Settings come from the environment / .env like every other
process of the project."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from rakuten_mlops.control_room import lake, predictions, quality, services, training
from rakuten_mlops.control_room.auth import require_login
from rakuten_mlops.settings import Settings, get_settings

# (url path, title, icon, render function)
PAGES: list[tuple[str, str, str, Callable[[Settings], None]]] = [
    ("lake", "Lake", ":material/database:", lake.render),
    ("training", "Training", ":material/model_training:", training.render),
    ("quality", "Data quality and drift", ":material/monitoring:", quality.render),
    ("predictions", "Predictions", ":material/online_prediction:", predictions.render),
    ("services", "Services", ":material/dns:", services.render),
]


def page(settings: Settings, render: Callable[[Settings], None]) -> Callable[[], None]:
    return lambda: render(settings)


def main() -> None:
    st.set_page_config(page_title="Rakuten control room", layout="wide")
    settings = get_settings()
    require_login(settings)
    navigation = st.navigation(
        [
            st.Page(page(settings, render), title=title, icon=icon, url_path=path,
                    default=index == 0)
            for index, (path, title, icon, render) in enumerate(PAGES)
        ]
    )
    navigation.run()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
