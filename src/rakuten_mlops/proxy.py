"""Compose mode's TLS reverse proxy (config/nginx/nginx.conf.template): its config and
a self-signed certificate for it.

The official nginx image renders the template itself (envsubst of the variables it is
given); `render_nginx_config` does the same here, for tests and for running Debian's
nginx in front of a local API.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

from rakuten_mlops.settings import project_root

TEMPLATE = Path("config/nginx/nginx.conf.template")
# The variables the template uses (the image substitutes only those it is given).
VARIABLE = re.compile(r"\$\{(PROXY_[A-Z0-9_]+)\}")
SERVICES = ("API", "AIRFLOW", "MLFLOW", "GRAFANA", "CONTROL_ROOM")
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


def template_variables(template: str) -> set[str]:
    return set(VARIABLE.findall(template))


def render_nginx_config(values: Mapping[str, str], template: str | None = None) -> str:
    """The template with its ${PROXY_*} variables replaced; every one must be given."""
    if template is None:
        template = (project_root() / TEMPLATE).read_text()
    missing = template_variables(template) - set(values)
    if missing:
        raise ValueError(f"no value for {', '.join(sorted(missing))}")
    return VARIABLE.sub(lambda match: str(values[match.group(1)]), template)


def write_self_signed_cert(folder: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path]:
    """cert.pem and key.pem (0600) in `folder`, for `hosts` (names or IP addresses).

    For a machine of your own: browsers warn about it until you trust it; with a real
    domain, put a CA-issued certificate and key under the same names instead.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    alternative_names = [_subject_alternative_name(host) for host in hosts]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    # Created 0600 from the start: the key is never readable by others, even briefly.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _subject_alternative_name(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
