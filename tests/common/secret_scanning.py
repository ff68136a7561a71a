"""GitHub's secret scanning in tests: a local server publishing an ECDSA P-256 public key as
GitHub publishes its own, and reports signed with the private key as GitHub signs them."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_IDENTIFIER = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"


class GithubKeys:
    """A key pair, its public half served at ``url`` in GitHub's format; ``fetches`` counts the GETs."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        published = {
            "public_keys": [{"key_identifier": KEY_IDENTIFIER, "key": public_pem.decode(), "is_current": True}]
        }
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.fetches += 1
                body = json.dumps(published).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/meta/public_keys/secret_scanning"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed(self, body: bytes, identifier: str = KEY_IDENTIFIER) -> dict[str, str]:
        """The headers GitHub sends with ``body``."""
        signature = self.private_key.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def report(*tokens: str, url: str = "https://github.com/acme/app/blob/abc123/.env") -> bytes:
    """A report as GitHub POSTs it: one ``{token, type, url, source}`` a token."""
    return json.dumps(
        [{"token": token, "type": "userpath_api_key", "url": url, "source": "content"} for token in tokens]
    ).encode()
