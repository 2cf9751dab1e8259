"""Pieces shared by the demo providers: the login page, client authentication, PKCE, signing keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from html import escape
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Request

from .users import DEMO_USERS

__all__ = [
    "NO_WAY_BACK",
    "PICK_AGAIN",
    "Counter",
    "DemoKey",
    "client_credentials",
    "error_page",
    "login_page",
    "pkce_matches",
    "secret_matches",
]


class Counter:
    """Thread-safe named counters (code exchanges, refreshes, exchanges) for tests and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def incr(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class DemoKey:
    """An RSA signing key with its public JWK (``kid`` is random: demo providers rotate by restart)."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_urlsafe(8)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        self.public_jwk: dict[str, Any] = jwk

    def sign(self, claims: Mapping[str, Any], typ: str = "JWT") -> str:
        return jwt.encode(dict(claims), self.private_key, algorithm="RS256",
                          headers={"kid": self.kid, "typ": typ})

    def verify(self, token: str, *, issuer: str, audience: str | None = None) -> dict[str, Any]:
        """Raises ``jwt.InvalidTokenError`` on any problem."""
        claims: dict[str, Any] = jwt.decode(
            token, self.private_key.public_key(), algorithms=["RS256"], issuer=issuer, audience=audience,
            options={"require": ["exp", "iss", "sub"], "verify_aud": audience is not None})
        return claims


def client_credentials(request: Request) -> tuple[str | None, str | None]:
    """``(client_id, client_secret)`` from HTTP Basic (RFC 6749 §2.3.1) or the form body."""
    auth = request.authorization
    if auth is not None and auth.type == "basic" and auth.username:
        return auth.username, auth.password
    return request.form.get("client_id"), request.form.get("client_secret")


def secret_matches(given: str | None, expected: str | None) -> bool:
    if expected is None:
        return given in (None, "")
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def pkce_matches(verifier: str | None, challenge: str) -> bool:
    """RFC 7636 §4.6, S256 only."""
    if not verifier or not 43 <= len(verifier) <= 128:
        return False
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return hmac.compare_digest(digest, challenge)


_STYLE = """<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font-family: system-ui, sans-serif; background: {bg}; margin: 0; padding: 0 1rem; }}
 main {{ max-width: 26rem; margin: 4rem auto; background: #fff; padding: 2rem; border-radius: 8px;
        box-shadow: 0 2px 12px rgba(0,0,0,.15); }}
 h1 {{ font-size: 1.3rem; margin-top: 0; }} label {{ display: block; margin: .4rem 0; }}
 .hint {{ color: #666; font-size: .85rem; }} button {{ margin: 1rem .5rem 0 0; padding: .4rem 1rem; }}
</style>"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
""" + _STYLE + """</head>
<body><main>
<h1>{title}</h1>
<p>The app <b>{client}</b> wants you to sign in{scopes}.</p>
<form method="post" action="{action}">
{hidden}
{choices}
<label>or another name: <input name="other" pattern="[a-z0-9](?:[a-z0-9\\-]{{0,30}}[a-z0-9])?" maxlength="32"
 title="lowercase letters, digits and inner hyphens (up to 32)" placeholder="carol"
 autocomplete="off" autocapitalize="none" spellcheck="false"></label>
<button type="submit" name="decision" value="login">Sign in</button>
<button type="submit" name="decision" value="deny">Cancel</button>
</form>
<p class="hint">Demo identity provider: no passwords. Pick a user, or type any lowercase name.</p>
</main></body></html>
"""

_ERROR = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in error — {title}</title>
""" + _STYLE + """</head>
<body><main>
<h1>Sign-in error</h1>
<p class="hint">{title}</p>
<p>{message}</p>
<p class="hint">{hint}</p>
</main></body></html>
"""


NO_WAY_BACK = "This provider cannot send you back to the app. Start again from the app."
PICK_AGAIN = "Use the Back button and pick a listed user, or type a lowercase name."


def error_page(*, title: str, background: str, message: str, hint: str = NO_WAY_BACK,
               status: int = 400) -> tuple[str, int]:
    """A login-page-styled error (the heading reads "Sign-in error"); ``message`` and ``hint`` are escaped."""
    return _ERROR.format(title=escape(title), bg=background, message=escape(message),
                         hint=escape(hint)), status


def login_page(*, title: str, background: str, client: str, scopes: str, action: str,
               params: Mapping[str, str]) -> str:
    """A real login form: pick a demo user (radio buttons), the authorize parameters ride along hidden."""
    hidden = "\n".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )
    choices = "\n".join(
        f'<label><input type="radio" name="username" value="{escape(u.username)}"'
        f'{" checked" if i == 0 else ""}>'
        f" {escape(u.name)} ({escape(u.username)})</label>"
        for i, u in enumerate(DEMO_USERS)
    )
    scope_text = f" (scopes: {escape(scopes)})" if scopes else ""
    return _PAGE.format(title=escape(title), bg=background, client=escape(client), scopes=scope_text,
                        action=escape(action), hidden=hidden, choices=choices)
