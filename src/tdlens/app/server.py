"""The explorer's HTTP side: a Flask application serving the static page and the JSON API.

Every handler calls one public method of :class:`~tdlens.app.Explorer`; errors become JSON
``{"error": message}`` with a 4xx status (a 500 says only the exception's type, the traceback
goes to the server log), never an HTML traceback.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, overload

from .methods import ExplorerError

if TYPE_CHECKING:
    from .explorer import Explorer

__all__ = ["create_app", "make_server"]

_log = logging.getLogger("tdlens.app")
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def _flask() -> Any:
    try:
        import flask
    except ImportError:
        raise ImportError(
            "the explorer needs Flask; install the app extra: pip install 'tdlens[app]'"
        ) from None
    return flask


@overload
def _int_arg(query: Any, name: str, default: int) -> int: ...
@overload
def _int_arg(query: Any, name: str, default: None) -> int | None: ...
def _int_arg(query: Any, name: str, default: int | None) -> int | None:
    text = query.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise ExplorerError(f"query parameter {name!r} must be an integer, got {text!r}") from None


def _bool_arg(query: Any, name: str) -> bool:
    text = (query.get(name) or "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ExplorerError(f"query parameter {name!r} must be true or false, got {text!r}")


def create_app(explorer: Explorer) -> Any:
    """The Flask application of ``explorer`` (routes: ``/``, ``/static/<file>``, ``/api/...``)."""
    flask = _flask()
    from werkzeug.exceptions import HTTPException

    app = flask.Flask("tdlens.app", static_folder=None)
    page = resources.files("tdlens.app") / "static"

    def png(data: bytes) -> Any:
        return flask.Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})

    @app.errorhandler(ExplorerError)
    def explorer_error(error: ExplorerError) -> Any:
        return flask.jsonify(error=error.message), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return flask.jsonify(error=f"{error.code} {error.name}: {error.description}"), error.code

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Any:
        _log.exception("explorer request failed")
        return flask.jsonify(
            error=f"internal error ({type(error).__name__}); see the server log"
        ), 500

    @app.after_request
    def headers(response: Any) -> Any:
        # the page builds its DOM from text nodes only; the policy stops inline scripts anyway
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def index() -> Any:
        return flask.Response((page / "index.html").read_text("utf-8"), mimetype="text/html")

    @app.get("/static/<name>")
    def static(name: str) -> Any:
        if name not in _STATIC:
            raise ExplorerError(f"no static file {name!r}", 404)
        return flask.Response((page / name).read_text("utf-8"), mimetype=_STATIC[name])

    @app.get("/api/info")
    def info() -> Any:
        return flask.jsonify(explorer.info())

    @app.get("/api/samples")
    def samples() -> Any:
        query = flask.request.args
        return flask.jsonify(
            explorer.samples(
                offset=_int_arg(query, "offset", 0),
                limit=_int_arg(query, "limit", 48),
                label=_int_arg(query, "label", None),
                predicted=_int_arg(query, "predicted", None),
                misclassified=_bool_arg(query, "misclassified"),
            )
        )

    @app.get("/api/methods")
    def methods() -> Any:
        return flask.jsonify(methods=explorer.methods())

    @app.post("/api/attribute")
    def attribute() -> Any:
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ExplorerError(
                'send a JSON object such as {"sample": 0, "method": "Saliency", "target": null, '
                '"args": {}} with Content-Type: application/json'
            )
        unknown = sorted(set(body) - {"sample", "method", "target", "args"})
        if unknown:
            raise ExplorerError(f"unknown field(s) {unknown}; send sample, method, target, args")
        if "sample" not in body or "method" not in body:
            raise ExplorerError("the request needs 'sample' and 'method'")
        return flask.jsonify(
            explorer.attribute(body["sample"], body["method"], body.get("target"), body.get("args"))
        )

    @app.get("/api/sample/<int:index>/image")
    def image(index: int) -> Any:
        return png(explorer.sample_png(index))

    @app.get("/api/sample/<int:index>/heatmap")
    def heatmap(index: int) -> Any:
        query = flask.request.args
        try:
            args = json.loads(query.get("args") or "{}")
        except json.JSONDecodeError:
            raise ExplorerError("query parameter 'args' must be a JSON object") from None
        return png(
            explorer.attribution_png(
                index, query.get("method"), _int_arg(query, "target", None), args
            )
        )

    return app


def make_server(explorer: Explorer, host: str, port: int) -> Any:
    """A threaded WSGI server for ``explorer`` on ``host:port`` (0: a free port), not started."""
    _flask()
    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as werkzeug_server

    class QuietHandler(WSGIRequestHandler):
        """Logs failures only: a line per request drowns the terminal the user serves from."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if str(code).startswith("5"):
                super().log_request(code, size)

    return werkzeug_server(
        host, port, create_app(explorer), threaded=True, request_handler=QuietHandler
    )
