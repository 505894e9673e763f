"""Counters keyed by dotted names ("decode.dropped.truncated") that add up across shards and nest into JSON."""
from __future__ import annotations

from collections import Counter


class Counts(Counter):
    def add(self, key: str, n: int = 1) -> None:
        self[key] += n

    def merged(self, *others: "Counts | dict") -> "Counts":
        out = Counts(self)
        for o in others:
            out.update(o)
        return out

    def nested(self) -> dict:
        """{"a.b.c": 1} -> {"a": {"b": {"c": 1}}}, keys sorted so the JSON is byte-stable."""
        root: dict = {}
        for key in sorted(self):
            node = root
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = int(self[key]) if float(self[key]).is_integer() else float(self[key])
        return root

    @classmethod
    def from_dict(cls, flat: dict) -> "Counts":
        return cls({k: v for k, v in flat.items()})
