"""Events: the bus, the event model and its wire form, and the standard event types."""

from chatterfix.events.bus import DeadLetter, EventBus, RetryPolicy, Subscription
from chatterfix.events.catalog import SystemEvents
from chatterfix.events.model import Event, EventError, from_cloudevent, to_cloudevent

__all__ = [
    "DeadLetter",
    "Event",
    "EventBus",
    "EventError",
    "RetryPolicy",
    "Subscription",
    "SystemEvents",
    "from_cloudevent",
    "to_cloudevent",
]
