"""POSTing JSON to a webhook (a Slack incoming webhook, a chat bridge, a pager), stdlib urllib.

A POST says, as an e-mail does (``mail``), whether the webhook certainly did not take the request
(WebhookRefused) or may have (WebhookUnanswered). Errors name neither the URL nor the body: a
webhook URL is a secret.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any


class WebhookRefused(Exception):
    """The webhook certainly did not take the request."""


class WebhookUnanswered(Exception):
    """The request went out but no answer came: the webhook may have taken it."""


def post_json(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST ``body`` as JSON; the errors name neither the URL nor the body (a webhook URL is a secret)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "userpath-worker"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise WebhookRefused(f"the webhook answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        # urllib raises URLError only while connecting and sending, before any answer.
        raise WebhookRefused(f"the webhook is unreachable ({type(error.reason).__name__})") from None
    except (OSError, http.client.HTTPException) as error:
        raise WebhookUnanswered(f"no answer from the webhook ({type(error).__name__})") from None
