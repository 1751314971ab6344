"""Start and stop a real Azurite (the Azure Storage emulator) on a free loopback port.

Azurite comes from the repository's own node_modules (`npm ci`, which `make test` runs). Its account
name and key are the emulator's published, fixed development credentials, not a secret.

`Azurite(oauth=True)` serves HTTPS with a self-signed certificate for 127.0.0.1 (`cert_path`, for a client
to trust) and also accepts bearer tokens, checked as `--oauth basic` does (BlobTokenAuthenticator.js):
a JWT with iat, nbf and exp around now, an Entra issuer (https://sts.windows.net/...), and a storage
audience (https://storage.azure.com); the signature is not checked. Bearer tokens need HTTPS there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# The fixed key every Azurite installation accepts (documented with the emulator).
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) PEM files for `host` (an IP address SAN), valid for a day, that a client trusts by
    loading the certificate itself as its CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Azurite:
    """One Azurite blob service process with its own data folder; `oauth=True` for HTTPS and bearer tokens."""

    def __init__(self, *, oauth: bool = False) -> None:
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run `npm ci` (make test does) to install Azurite")
        self.port = free_port()
        self.location = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.oauth = oauth
        self.cert_path: Path | None = None
        self._tls: list[str] = []
        if oauth:
            tls = self.location / "tls"
            tls.mkdir()
            self.cert_path, key_path = self_signed_certificate(tls)
            self._tls = ["--cert", str(self.cert_path), "--key", str(key_path), "--oauth", "basic"]

    @property
    def account_url(self) -> str:
        return f"{'https' if self.oauth else 'http'}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        protocol = "https" if self.oauth else "http"
        return (
            f"DefaultEndpointsProtocol={protocol};AccountName={ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def start(self, timeout_s: float = 30.0) -> Azurite:
        self.process = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost", "127.0.0.1",
                "--blobPort", str(self.port),
                "--location", str(self.location),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                *self._tls,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with status {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{self.port} within {timeout_s} s")

    def stop(self) -> None:
        # Killed, not asked to shut down: it takes Azurite 10 s to close gracefully, and its data is a temp
        # folder we delete anyway. For the tests it is also the harsher outage.
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.location, ignore_errors=True)
