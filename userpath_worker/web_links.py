"""Addresses of the web pages, for whatever points people at them: reminders, e-mails, the pages.

A leaf module, so that the rotation reminders and the web pages build the same link without either
importing the other. ``base_url`` is ``USERPATH_WEB_BASE_URL`` (no trailing slash).
"""

from __future__ import annotations


def key_anchor(key_id: int) -> str:
    """The ``id`` of a key's row on its organization's API Keys page: ``key-<id>``."""
    return f"key-{key_id}"


def api_keys_url(base_url: str, org_id: int) -> str:
    """An organization's Settings -> API Keys page."""
    return f"{base_url}/orgs/{org_id}/settings/api-keys"


def key_url(base_url: str, org_id: int, key_id: int) -> str:
    """One key on its organization's API Keys page (the row whose id is ``key_anchor(key_id)``)."""
    return f"{api_keys_url(base_url, org_id)}#{key_anchor(key_id)}"
