"""POST /v1/secret-scanning/github: GitHub's secret-scanning partner reports, answered by
``keys.exposure`` (which any HTTP app can mount the same way). A machine's request: no session,
no CSRF token, no Origin check; the report's signature is its only credential."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from userpath_worker.keys.exposure import GITHUB_REPORTS_PATH, ExposureService

blueprint = Blueprint("secret_scanning", __name__)
ENDPOINT = "secret_scanning.github_report"  # exempt from the Origin and CSRF checks (app.py)


@blueprint.post(GITHUB_REPORTS_PATH)
def github_report() -> Any:
    reports: ExposureService = current_app.extensions["userpath.exposure"]
    status, body = reports.github_report(request.headers, request.get_data(cache=False))
    return jsonify(body), status
