"""Demo users. ``alice`` and ``bob`` are listed on every login page; any other name matching
``[a-z0-9-]{1,32}`` is accepted too (the load benchmark logs in as ``user-0`` … ``user-49``).

Every provider derives its own subject for a user, the way real providers do: the corp IdP uses
``corp-<name>``, the cloud IdP an opaque hash, the GitHub-like provider a number.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["DEMO_USERS", "USERNAME_RE", "DemoUser", "user_for"]

USERNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


@dataclass(frozen=True)
class DemoUser:
    username: str
    name: str
    email: str

    @property
    def corp_subject(self) -> str:
        return f"corp-{self.username}"

    @property
    def cloud_subject(self) -> str:
        return "cl_" + hashlib.sha256(f"cloud:{self.username}".encode()).hexdigest()[:16]

    @property
    def github_id(self) -> int:
        # Numeric, like GitHub's user ids (the AS must turn it into a string subject).
        return 1000 + int(hashlib.sha256(f"gh:{self.username}".encode()).hexdigest()[:8], 16) % 9_000_000

    @property
    def github_login(self) -> str:
        return f"{self.username}-gh"


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("alice", "Alice Example", "alice@example.com"),
    DemoUser("bob", "Bob Example", "bob@example.com"),
)


def user_for(username: str) -> DemoUser | None:
    """The demo user called ``username`` (made up on the fly for names other than alice/bob)."""
    for user in DEMO_USERS:
        if user.username == username:
            return user
    if not USERNAME_RE.match(username):
        return None
    return DemoUser(username, username.replace("-", " ").title(), f"{username}@example.com")
