"""Pure folding of upstream events: classify them, repair terminal events, build the final Response.

``ResponseFolder`` is fed every upstream event of one response in order. It remembers the
``response.output_item.done`` items so a thin terminal frame (``output`` missing or ``[]``, as the
ChatGPT backend sends) can be rebuilt, and it defaults the ``usage`` detail objects strict clients
read. The same repaired object serves the SSE terminal event and the JSON answer.
"""

from __future__ import annotations

import enum
from typing import Any

TERMINAL_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete"})
VENDOR_PREFIXES = ("codex.", "responsesapi.")


class EventKind(enum.Enum):
    """What an upstream event means to the bridge."""

    CREATED = "created"
    TERMINAL = "terminal"
    ERROR = "error"
    VENDOR = "vendor"
    OTHER = "other"


def classify(event: dict[str, Any]) -> EventKind:
    """Classify an upstream event by its ``type``."""
    kind = event.get("type")
    if kind == "response.created":
        return EventKind.CREATED
    if kind in TERMINAL_TYPES:
        return EventKind.TERMINAL
    if kind == "error":
        return EventKind.ERROR
    if isinstance(kind, str) and kind.startswith(VENDOR_PREFIXES):
        return EventKind.VENDOR
    return EventKind.OTHER


def error_status(event: dict[str, Any]) -> int | None:
    """The HTTP status of an upstream ``error`` frame (``status`` or ``status_code``), if valid."""
    for key in ("status", "status_code"):
        value = event.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    nested = event.get("error")
    if isinstance(nested, dict) and nested is not event:
        for key in ("status", "status_code"):
            value = nested.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
    return None


def error_object(event: dict[str, Any]) -> dict[str, Any]:
    """The error object of an ``error`` frame (nested ``error``, or the flat fields)."""
    nested = event.get("error")
    if isinstance(nested, dict):
        return dict(nested)
    # Not "type": in the flat shape that is the event's type ("error"), not the error's.
    return {key: event[key] for key in ("message", "code", "param") if key in event} or {
        "message": "The upstream sent an error event without details."
    }


def _with_usage_defaults(usage: Any) -> tuple[Any, bool]:
    if not isinstance(usage, dict):
        return usage, False
    fixed = dict(usage)
    changed = False
    for key, field in (
        ("input_tokens_details", "cached_tokens"),
        ("output_tokens_details", "reasoning_tokens"),
    ):
        details = fixed.get(key)
        if not isinstance(details, dict):
            fixed[key] = {field: 0}
            changed = True
        elif field not in details:
            fixed[key] = {**details, field: 0}
            changed = True
    return fixed, changed


def _item_id(item: dict[str, Any]) -> str | None:
    """An output item's ``id`` when it is a string (ids of other types cannot be matched)."""
    value = item.get("id")
    return value if isinstance(value, str) else None


class ResponseFolder:
    """Folds the events of one response; see the module docstring."""

    def __init__(self) -> None:
        self._done_items: dict[int, dict[str, Any]] = {}
        self._late_index = 1 << 30  # done items without a usable output_index keep arrival order
        self.created: dict[str, Any] | None = None
        self.terminal: dict[str, Any] | None = None
        self.events = 0

    def feed(self, event: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Take one event; returns the event to forward and whether the bridge changed it."""
        self.events += 1
        kind = event.get("type")
        if kind == "response.created" and isinstance(event.get("response"), dict):
            self.created = event["response"]
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            index = event.get("output_index")
            if not isinstance(index, int) or isinstance(index, bool) or index in self._done_items:
                index = self._late_index
                self._late_index += 1
            self._done_items[index] = event["item"]
        elif kind in TERMINAL_TYPES:
            repaired, changed = self.repair(event)
            self.terminal = repaired
            return repaired, changed
        return event, False

    def done_items(self) -> list[dict[str, Any]]:
        """The ``output_item.done`` items in ``output_index`` order."""
        return [self._done_items[i] for i in sorted(self._done_items)]

    def repair(self, event: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """A terminal event with ``output`` rebuilt where thin and ``usage`` details defaulted."""
        response = event.get("response")
        if not isinstance(response, dict):
            response = dict(self.created or {})
            response["status"] = str(event.get("type")).removeprefix("response.")
            response.setdefault("output", [])
            return {**event, "response": self._repair_response(response)[0]}, True
        fixed, changed = self._repair_response(response)
        if not changed:
            return event, False
        return {**event, "response": fixed}, True

    def _repair_response(self, response: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        fixed = dict(response)
        output = response.get("output")
        done = self.done_items()
        changed = False
        if not isinstance(output, list) or not output:
            fixed["output"] = done
            changed = not isinstance(output, list) or bool(done)
        elif done:
            by_id = {_item_id(item): item for item in done if _item_id(item) is not None}
            replaced = [
                by_id.get(_item_id(item), item) if isinstance(item, dict) else item
                for item in output
            ]
            seen = {_item_id(item) for item in replaced if isinstance(item, dict)}
            missing = [item for item in done if _item_id(item) not in seen]
            rebuilt = replaced + missing
            if rebuilt != output:
                fixed["output"] = rebuilt
                changed = True
        if "usage" in fixed:
            usage, usage_changed = _with_usage_defaults(fixed["usage"])
            if usage_changed:
                fixed["usage"] = usage
                changed = True
        return fixed, changed

    def synthesize_created(self, terminal: dict[str, Any]) -> dict[str, Any]:
        """A ``response.created`` for a stream whose upstream skipped it (strict clients need one
        first), made from the terminal event's response."""
        response = terminal.get("response")
        base = dict(response) if isinstance(response, dict) else {}
        base["status"] = "in_progress"
        base["output"] = []
        return {"type": "response.created", "response": base}
