"""The seeds' ``SampleJob``: ``asyncjobs run SampleJob process "a,b"``."""

from __future__ import annotations


class SampleJob:
    def process(self, *params: object, previous: object = None) -> dict[str, object]:
        """Joins its parameters; in a chain it also receives the previous step's result."""
        result: dict[str, object] = {"processed": list(params),
                                     "joined": ",".join(map(str, params))}
        if previous is not None:
            result["previous"] = previous
        return result
