"""``create_app(settings)``: the Flask application behind ``userpath web``."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import Engine, text
from werkzeug.exceptions import HTTPException

from config.settings import Settings
from userpath_worker.accounts.secret import web_secret
from userpath_worker.db import make_engine, make_session_factory, writer
from userpath_worker.errors import NotFound, PermissionDenied
from userpath_worker.keys.exposure import ExposureService
from userpath_worker.keys.services import configured_pepper
from userpath_worker.rotation.services import RotationPolicy
from userpath_worker.web import (
    audit,
    auth,
    context,
    formatting,
    ingestion,
    keys,
    members,
    secret_scanning,
    security,
    webhooks,
)

SESSION_COOKIE = "userpath_session"
MAX_FORM_BYTES = 64 * 1024  # our forms are a few short fields; waitress refuses a larger body too


def create_app(settings: Settings, engine: Engine | None = None) -> Flask:
    """The pages on ``engine`` (by default one made from USERPATH_DATABASE_URL), whose schema the
    caller has prepared (``userpath web`` does, once, at start)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=web_secret(settings),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web_base_url.startswith("https://"),
        # The cookie lasts as long as the browser; the server ends the session after 12 h idle.
        SESSION_REFRESH_EACH_REQUEST=False,
        # A form's CSRF token is good for as long as its session: a page left open an hour
        # before submitting still works. Sign-in starts a new session, and so new tokens.
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
    )
    pepper = configured_pepper(settings)  # before serving: a key made on these pages must pass the worker's check
    engine = engine or make_engine(settings.database_url, hide_parameters=True)
    form_sessions = make_session_factory(writer(engine))
    app.extensions["userpath"] = context.Web(
        settings=settings,
        sessions=make_session_factory(engine),
        form_sessions=form_sessions,
        policy=RotationPolicy.from_settings(settings),
    )
    # GitHub's leak reports write as a form does, each in a transaction of its own.
    app.extensions["userpath.exposure"] = ExposureService(settings, form_sessions.begin, pepper)

    csrf = CSRFProtect(app)
    csrf.exempt(secret_scanning.blueprint)  # GitHub's reports: signed, sent with no session
    # The Origin check runs first, before CSRF; a machine's POST sends no Origin.
    security.install(app, settings.web_base_url, machine_endpoints={secret_scanning.ENDPOINT})
    app.before_request(context.load_account)
    app.teardown_appcontext(context.close_db)
    app.context_processor(context.template_globals)
    app.add_template_filter(formatting.utc)
    app.add_template_filter(formatting.relative)
    _register_errors(app)

    for blueprint in (
        auth.blueprint,
        keys.blueprint,
        ingestion.blueprint,
        members.blueprint,
        webhooks.blueprint,
        audit.blueprint,
        secret_scanning.blueprint,
    ):
        app.register_blueprint(blueprint)

    @app.get("/healthz")
    def healthz() -> Response:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return Response("ok", mimetype="text/plain")

    return app


def _register_errors(app: Flask) -> None:
    def error_page(status: int, title: str, message: str) -> tuple[str, int]:
        # The way back is the base URL, not this host: a page opened as localhost instead of the
        # configured 127.0.0.1 has its forms refused (the Origin check), and the link must lead out.
        home = context.web().settings.web_base_url + "/"
        return context.page("error.html", status, title=title, message=message, home=home)

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError) -> Any:
        return error_page(
            400,
            "The form expired",
            "This form was sent without its security token. Go back, reload the page and retry.",
        )

    @app.errorhandler(PermissionDenied)
    def not_allowed(error: PermissionDenied) -> Any:
        return error_page(403, "Not allowed", str(error))

    @app.errorhandler(NotFound)
    def not_found(error: NotFound) -> Any:
        # Never say whether a key or member exists elsewhere: the same page as an unknown address.
        return error_page(404, "Not found", "There is nothing here, or it is not yours to see.")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        if status >= 500:
            # The database may be why: render without it (no switcher, no account in the header).
            context.close_db()
            g.account = None
            g.pop("memberships", None)
        message = "There is nothing here, or it is not yours to see." if status == 404 else error.description
        return error_page(status, error.name, message or "")
