"""What every response and every form submission gets, whatever the view.

Response headers: a Content-Security-Policy that allows nothing but this site's own files (no
inline script or style, no framing, no form posted elsewhere), nosniff, a same-origin referrer and
``X-Frame-Options`` for browsers older than ``frame-ancestors``. Pages are never stored by a cache
(they name keys and members; two of them show a secret once).

Every POST must come from a page of this site: its Origin header (or, if a browser sent none, its
Referer) must be the origin of USERPATH_WEB_BASE_URL, or it is refused with 403 before any view or
CSRF check runs. Flask-WTF's CSRF token (app.py) is the second, independent check.
"""

from __future__ import annotations

import urllib.parse

from flask import Flask, Response, abort, request

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower case, without a default port;
    None for anything else (``null``, a relative URL, another scheme)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def is_local_path(target: str | None) -> bool:
    """Whether ``target`` is a path on this site, safe to redirect to after sign-in: it starts with
    one slash, and no browser reads it as another host (``//evil``, ``/\\evil``) or scheme."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    if "\\" in target or any(ord(character) < 32 or ord(character) == 127 for character in target):
        return False
    parts = urllib.parse.urlsplit(target)
    return not parts.scheme and not parts.netloc


def install(app: Flask, base_url: str, machine_endpoints: frozenset[str] | set[str] = frozenset()) -> None:
    """Register the Origin check (before anything else of the app runs) and the headers.
    ``machine_endpoints``: views that machines POST to, with no browser and no session, which
    authenticate each request themselves (a signature): no Origin check."""
    expected = origin_of(base_url)

    def check_origin() -> None:
        if request.method in SAFE_METHODS or request.endpoint in machine_endpoints:
            return
        sent = request.headers.get("Origin")
        if sent is None:
            referer = request.headers.get("Referer")
            sent = origin_of(referer) if referer else None
        else:
            sent = origin_of(sent)
        if sent is None or sent != expected:
            abort(403, description=f"this form was not sent from {base_url}; open the page there and try again")

    def add_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if request.endpoint != "static":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.before_request_funcs.setdefault(None, []).insert(0, check_origin)
    app.after_request(add_headers)
