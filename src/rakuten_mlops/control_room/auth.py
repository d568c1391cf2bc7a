"""The control room's login: streamlit-authenticator with the one user from .env
(CONTROL_ROOM_USER / CONTROL_ROOM_PASSWORD). The password is bcrypt-hashed once per
process; the session cookie is signed with a key derived from it, so changing the
password also ends every session. Nothing of a page renders before the login succeeds."""

from __future__ import annotations

import hashlib

import streamlit as st
import streamlit_authenticator as stauth

from rakuten_mlops.settings import Settings

COOKIE_NAME = "rakuten_control_room"
COOKIE_DAYS = 1.0


@st.cache_resource(show_spinner=False)
def hashed_password(password: str) -> str:
    # bcrypt costs about 0.2 s: once per process, not on every rerun of every page.
    return stauth.Hasher.hash(password)


def cookie_key(password: str) -> str:
    return hashlib.sha256(f"{COOKIE_NAME}\0{password}".encode()).hexdigest()


def require_login(settings: Settings) -> None:
    """Show the login form and stop the script until the user is signed in."""
    secret = settings.control_room_password
    if secret is None or not secret.get_secret_value():
        st.error("The control room needs CONTROL_ROOM_PASSWORD: run `make setup`.")
        st.stop()
    password = secret.get_secret_value()
    user = settings.control_room_user
    credentials = {
        "usernames": {user: {"first_name": user, "password": hashed_password(password)}}
    }
    authenticator = stauth.Authenticate(
        credentials, COOKIE_NAME, cookie_key(password), COOKIE_DAYS, auto_hash=False
    )
    authenticator.login(location="main", fields={"Form name": "Control room"})
    status = st.session_state.get("authentication_status")
    if status is False:
        st.error("Wrong user name or password.")
    if not status:
        st.stop()
    with st.sidebar:
        st.caption(f"signed in as {user}")
        authenticator.logout(location="sidebar")
