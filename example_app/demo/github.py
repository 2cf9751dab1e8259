"""A demo GitHub-like OAuth2 provider and REST API (not OIDC), modelled on GitHub's OAuth app docs.

OAuth: ``/login/oauth/authorize`` (login page) and ``/login/oauth/access_token``. Like GitHub it
authenticates clients with ``client_secret`` in the form (``client_secret_post``), answers
form-encoded unless the request says ``Accept: application/json``, reports errors such as
``bad_verification_code`` with HTTP 200, issues no refresh tokens and no expiry, and has numeric user
ids. PKCE S256 is required (GitHub accepts it; the AS always sends it).

Fault knob (off by default; only ``bench/faults.py`` turns it on): ``token_failure_rate`` makes that
share of token calls answer HTTP 500 with an HTML page, before the code is looked at, so the code
stays redeemable and a retrying client would be seen. ``injected_failures`` lists the demo user of
each code that got a 500 (``None`` for an unknown code).

API: ``/user`` and ``/user/repos`` need ``Authorization: Bearer <token>`` (or ``token <token>``).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, request

from ._common import PICK_AGAIN, Counter, error_page, login_page, pkce_matches, secret_matches
from .users import DemoUser, user_for

__all__ = ["GitHubLike"]

_REPO_NAMES = ("dotfiles", "notes", "mcp-experiments")
_TITLE = "Sign in to GitHub (demo)"
_BACKGROUND = "#24292f"


class GitHubLike:
    """The demo provider at ``base_url``; ``.app`` is its Flask app."""

    def __init__(self, base_url: str, *, code_ttl: int = 600, token_failure_rate: float = 0.0,
                 failure_seed: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.code_ttl = code_ttl
        self.clients: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.counters = Counter()
        self._lock = threading.Lock()
        self._codes: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, tuple[DemoUser, str]] = {}
        self.injected_failures: list[str | None] = []
        self.inject_token_failures(token_failure_rate, seed=failure_seed)
        self.app = self._build_app()

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.base_url}/login/oauth/authorize"

    @property
    def token_endpoint(self) -> str:
        return f"{self.base_url}/login/oauth/access_token"

    @property
    def userinfo_endpoint(self) -> str:
        return f"{self.base_url}/user"

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self.clients[client_id] = (client_secret, tuple(redirect_uris))

    def inject_token_failures(self, rate: float, *, seed: int | None = None) -> None:
        """Answer ``rate`` (0 … 1) of the token calls from now on with HTTP 500 (0 turns it off)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self.token_failure_rate = rate
            # Picks which calls fail (fault injection, not security): seeded for repeatable runs.
            self._failure_rng = random.Random(seed)  # noqa: S311

    def _inject_failure(self) -> Response | None:
        """The injected 500 for this token call, or ``None``; records whose code it was."""
        with self._lock:
            if self.token_failure_rate <= 0 or self._failure_rng.random() >= self.token_failure_rate:
                return None
            record = self._codes.get(request.form.get("code", ""))  # peek: the code stays valid
            self.injected_failures.append(record["user"].username if record else None)
        self.counters.incr("injected_failures")
        return Response("<html><body><h1>500 Internal Server Error</h1></body></html>", status=500,
                        mimetype="text/html")

    @staticmethod
    def repos_of(user: DemoUser) -> list[dict[str, Any]]:
        return [
            {"id": user.github_id * 10 + i, "name": name, "full_name": f"{user.github_login}/{name}",
             "private": i == 0, "owner": {"login": user.github_login, "id": user.github_id}}
            for i, name in enumerate(_REPO_NAMES)
        ]

    def _answer(self, values: dict[str, Any]) -> Response:
        # GitHub answers form-encoded unless asked for JSON, and reports errors with HTTP 200.
        if "application/json" in request.headers.get("Accept", ""):
            return jsonify(values)
        return Response(urlencode(values), mimetype="application/x-www-form-urlencoded")

    def _user_from_request(self) -> DemoUser | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        with self._lock:
            entry = self._tokens.get(token)
        return entry[0] if entry else None

    def _build_app(self) -> Flask:
        app = Flask("demo-github")

        @app.route("/login/oauth/authorize", methods=["GET", "POST"])
        def authorize() -> Response | tuple[str, int]:
            params = {k: v for k, v in (request.args if request.method == "GET" else request.form).items()
                      if k not in ("username", "other", "decision")}
            client = self.clients.get(params.get("client_id", ""))
            redirect_uri = params.get("redirect_uri", "")
            if client is None or redirect_uri not in client[1]:
                return error_page(title=_TITLE, background=_BACKGROUND,
                                  message="The redirect_uri must match the registered callback.")

            def back(**values: str) -> Response:
                if params.get("state"):
                    values["state"] = params["state"]
                return Response(status=302, headers={"Location": f"{redirect_uri}?{urlencode(values)}"})

            if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
                return back(error="invalid_request")
            if request.method == "GET":
                return Response(login_page(title=_TITLE, background=_BACKGROUND,
                                           client="MCP example", scopes=params.get("scope", ""),
                                           action=self.authorization_endpoint, params=params),
                                mimetype="text/html")
            if request.form.get("decision") == "deny":
                return back(error="access_denied")
            user = user_for(request.form.get("other") or request.form.get("username", ""))
            if user is None:
                return error_page(title=_TITLE, background=_BACKGROUND, message="Unknown user.",
                                  hint=PICK_AGAIN)
            code = secrets.token_hex(10)
            with self._lock:
                self._codes[code] = {"user": user, "client_id": params["client_id"],
                                     "redirect_uri": redirect_uri, "challenge": params["code_challenge"],
                                     "scope": params.get("scope", ""), "exp": time.time() + self.code_ttl}
            self.counters.incr("codes_issued")
            return back(code=code)

        @app.post("/login/oauth/access_token")
        def access_token() -> Response:
            self.counters.incr("code_exchanges")
            failure = self._inject_failure()
            if failure is not None:
                return failure
            client = self.clients.get(request.form.get("client_id", ""))
            if client is None or not secret_matches(request.form.get("client_secret"), client[0]):
                return self._answer({"error": "incorrect_client_credentials"})
            with self._lock:
                record = self._codes.pop(request.form.get("code", ""), None)  # single use
            if (record is None or record["exp"] < time.time()
                    or record["client_id"] != request.form.get("client_id")
                    or not pkce_matches(request.form.get("code_verifier"), record["challenge"])):
                return self._answer({"error": "bad_verification_code"})
            if request.form.get("redirect_uri") not in (None, record["redirect_uri"]):
                return self._answer({"error": "redirect_uri_mismatch"})
            token = "gho_" + secrets.token_urlsafe(27)
            with self._lock:
                self._tokens[token] = (record["user"], record["scope"])
            return self._answer({"access_token": token, "token_type": "bearer", "scope": record["scope"]})

        def bad_credentials() -> Response:
            response = jsonify(message="Bad credentials")
            response.status_code = 401
            return response

        @app.get("/user")
        def user() -> Response:
            self.counters.incr("api_calls")
            who = self._user_from_request()
            if who is None:
                return bad_credentials()
            return jsonify(id=who.github_id, login=who.github_login, name=who.name, email=None)

        @app.get("/user/repos")
        def repos() -> Response:
            self.counters.incr("api_calls")
            who = self._user_from_request()
            if who is None:
                return bad_credentials()
            return jsonify(self.repos_of(who))

        return app
