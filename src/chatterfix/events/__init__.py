"""Events: the bus, the event model and the standard event types."""

from chatterfix.events.bus import Event, EventBus, HandlerFailure, Subscription
from chatterfix.events.catalog import SystemEvents

__all__ = ["Event", "EventBus", "HandlerFailure", "Subscription", "SystemEvents"]
