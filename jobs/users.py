"""User session services from the seeds."""

from __future__ import annotations


class UserLoginService:
    def handle(self, user: str) -> dict[str, str]:
        if not user:
            raise ValueError("user must not be empty")
        return {"logged_in": user}


class UserLogoutService:
    def handle(self, user: str) -> dict[str, str]:
        return {"logged_out": user}
