"""The review web app: a Flask app over one recording or one set of drives, and the loopback
server `scripts/review.py` starts.

Safety: every file it serves is looked up by an index into what it opened (a row's camera
frame inside the recording's `IMG/`, a drive's frame inside its folder, the app's own static
files through Flask's safe join), never by a path taken from the request; it writes only the
exclusions sidecar, and only for a JSON request (a page of another site cannot send one
without a CORS preflight, which this app never grants).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, request, send_file

from bc.core import udacity
from bc.errors import BcError
from bc.review.drive import Drive, ReviewError, find_drives
from bc.review.model import ModelReview
from bc.review.recording import Recording
from bc.core.images import decode_jpeg

STATIC = Path(__file__).parent / "static"
FRAME_MAX_AGE_S = 3600  # recorded frames never change while the app runs
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


class Review:
    """What one app shows: a recording (with an optional model) or drives."""

    def __init__(self, path: str | os.PathLike, model: Any = None) -> None:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise ReviewError(f"{folder} does not exist (expected a recording folder, an "
                              "evaluate.py output or a drive.py image folder)")
        self.recording: Recording | None = None
        self.drives: list[Drive] = []
        if (folder / udacity.LOG_NAME).is_file() or folder.suffix.lower() == ".csv":
            self.recording = Recording(folder)
        else:
            self.drives = find_drives(folder)
        self.model = ModelReview(model) if model is not None else None
        if self.model is not None and self.recording is not None:
            self.model.predict_all(self.recording.paths["center"])

    def close(self) -> None:
        """Stop the background work (flags, predictions, video decoding)."""
        if self.model is not None:
            self.model.close()
        if self.recording is not None:
            self.recording.close()
        for drive in self.drives:
            drive.close()

    @property
    def kind(self) -> str:
        return "recording" if self.recording is not None else "drive"


def _jpeg(data: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "no-store",
                                                          **(headers or {})})


def create_app(review: Review, loopback: bool = True) -> Flask:
    """The Flask app serving `review` (the page, its JSON and the frames). With `loopback`,
    a request naming another host is refused (a web page cannot reach the app by pointing a
    name of its own at 127.0.0.1)."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.json.sort_keys = False
    if loopback:
        app.config["TRUSTED_HOSTS"] = list(LOOPBACK_NAMES)

    @app.get("/")
    def index() -> Response:
        return send_file(STATIC / "index.html", max_age=0)

    @app.get("/api/info")
    def info() -> Response:
        return jsonify({"kind": review.kind,
                        "model": None if review.model is None else review.model.source})

    # -- recording ----------------------------------------------------------------------------
    def recording() -> Recording:
        if review.recording is None:
            abort(404)
        return review.recording

    @app.get("/api/recording")
    def recording_payload() -> Response:
        return jsonify(recording().payload())

    @app.get("/api/flags")
    def flags_payload() -> Response:
        return jsonify(recording().flags_payload())

    @app.get("/frame/<camera>/<int:index>")
    def frame(camera: str, index: int) -> Response:
        path = recording().frame_path(camera, index)
        if path is None:
            abort(404)
        return send_file(path, mimetype="image/jpeg", max_age=FRAME_MAX_AGE_S, etag=False,
                         last_modified=None)

    @app.post("/api/exclusions")
    def exclude() -> Response:
        body = _json_body()
        try:
            ranges = recording().exclude(int(body["first"]), int(body["last"]),
                                         str(body.get("note", "")))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            return jsonify({"error": f"expected {{first, last}} row indices: {error}"}), 400
        return jsonify({"exclusions": ranges})

    @app.post("/api/exclusions/undo")
    def undo() -> Response:
        body = _json_body()
        try:
            ranges = recording().undo(body.get("index"))
        except (TypeError, ValueError, IndexError) as error:
            return jsonify({"error": str(error)}), 400
        return jsonify({"exclusions": ranges})

    # -- model --------------------------------------------------------------------------------
    def model() -> ModelReview:
        if review.model is None:
            abort(404)
        return review.model

    @app.get("/api/predictions")
    def predictions() -> Response:
        return jsonify(model().predictions_payload())

    @app.get("/saliency/<int:index>")
    def saliency(index: int) -> Response:
        path = recording().frame_path("center", index)
        if path is None:
            abort(404)
        return _saliency(model(), _read(path))

    # -- drives -------------------------------------------------------------------------------
    def drive(number: int) -> Drive:
        if not 0 <= number < len(review.drives):
            abort(404)
        return review.drives[number]

    @app.get("/api/drives")
    def drives_payload() -> Response:
        return jsonify({"drives": [entry.payload() for entry in review.drives]})

    @app.get("/drive/<int:number>/frame/<int:step>")
    def drive_frame(number: int, step: int) -> Response:
        data = drive(number).frame_jpeg(step)
        if data is None:
            abort(404)
        return _jpeg(data)

    @app.get("/drive/<int:number>/saliency/<int:step>")
    def drive_saliency(number: int, step: int) -> Response:
        data = drive(number).frame_jpeg(step)
        if data is None:
            abort(404)
        return _saliency(model(), data)

    @app.errorhandler(BcError)
    def bad_input(error: BcError) -> Response:
        return jsonify({"error": str(error)}), 400

    return app


def _json_body() -> dict:
    if not request.is_json:
        abort(415)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400)
    return body


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _saliency(model: ModelReview, jpeg: bytes) -> Response:

    drawn, steering = model.saliency_jpeg(decode_jpeg(jpeg))
    return _jpeg(drawn, {"X-Steering": f"{steering:.4f}"})


def make_server(review: Review, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A threaded WSGI server for the app, bound (port 0: a free port); `.serve_forever()`
    runs it, `.server_port` says where."""
    from werkzeug.serving import make_server as werkzeug_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per frame served
    try:
        loopback = host in LOOPBACK_NAMES
        return werkzeug_server(host, port, create_app(review, loopback), threaded=True)
    except OSError as error:
        raise ReviewError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def url_of(server: Any) -> str:
    host = server.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{server.server_port}/"


def serve(review: Review, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until Ctrl-C, printing the URL first."""
    server = make_server(review, host, port)
    what = review.recording.folder if review.recording is not None else \
        ", ".join(str(entry.folder) for entry in review.drives)
    print(f"reviewing {what}\nopen {url_of(server)} in a browser (Ctrl-C stops)", flush=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        review.close()
