"""Kubernetes mode: the Secret that deploy/k8s's overlays generate comes from a file of
`KEY=value` lines, never committed; `rakuten-mlops k8s-secrets` writes it from `.env`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rakuten_mlops.errors import ConfigurationError
from rakuten_mlops.settings import SECRET_NAME

SECRETS_FILE = Path("deploy/k8s/overlays/production/secrets.env")


def secret_lines(env_text: str) -> list[str]:
    """The `KEY=value` lines of a .env that hold a secret (named as settings.SECRET_NAME)."""
    lines = []
    for line in env_text.splitlines():
        key, sep, value = line.partition("=")
        is_setting = sep and not line.lstrip().startswith("#") and value.strip()
        if is_setting and SECRET_NAME.search(key.strip()):
            lines.append(f"{key.strip()}={value.strip()}")
    return lines


def write_secrets_file(env_path: Path, target: Path) -> int:
    """`target` (mode 0600, replaced whole) with the secrets of `env_path`; how many."""
    if not env_path.is_file():
        raise ConfigurationError(f"{env_path} does not exist (run `make setup` first)")
    lines = secret_lines(env_path.read_text())
    if not lines:
        raise ConfigurationError(f"{env_path} holds no secret (run `make setup` first)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a crash never leaves half a file.
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".secrets-")
    try:
        with os.fdopen(descriptor, "w") as handle:  # mkstemp creates it 0600
            handle.write("\n".join(lines) + "\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return len(lines)
