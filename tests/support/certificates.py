"""A test CA and certificates signed by it, made with openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue_certificate(name: str, cwd: Path) -> None:
    """``name``.key and ``name``.crt for 127.0.0.1, signed by the CA in ``cwd``."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    subject = ("-subj", "/CN=127.0.0.1")
    openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", *subject, cwd=cwd)
    (cwd / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt"),
        cwd=cwd,
    )


def make_certificates(cwd: Path) -> Path:
    """A test CA (ca.crt, ca.key) in ``cwd``, and server.* and client.* signed by it."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=edge test CA")
    openssl("req", "-x509", *key, *ca, cwd=cwd)
    issue_certificate("server", cwd)
    issue_certificate("client", cwd)
    return cwd
