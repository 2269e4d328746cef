"""Lesson lifecycle services from the seeds: each handles one event about a lesson."""

from __future__ import annotations


class LessonCreatedService:
    def handle(self, title: str) -> dict[str, str]:
        print(f"lesson created: {title}")
        return {"created": title}


class LessonStartedService:
    def handle(self, title: str) -> dict[str, str]:
        print(f"lesson started: {title}")
        return {"started": title}


class LessonEndedService:
    async def handle(self, title: str) -> dict[str, str]:
        # An async job: the worker runs it in its own event loop.
        print(f"lesson ended: {title}")
        return {"ended": title}
