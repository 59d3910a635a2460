"""Standard event types, with the dotted names of the original ChatterFix platform."""

from __future__ import annotations


class SystemEvents:
    """Event type constants. Values are plain strings, so plugins may add their own types.

    Payloads (the ``data`` of the event):

    - ``PLUGIN_*``: ``{"plugin": name, "version": ..., "error": message-or-""}``
    - ``SERVICE_*``: ``{"service": name, "url": ...}``
    - ``USER_*``: ``{"user_id": ..., "username": ...}``
    - ``WORK_ORDER_*``: ``{"work_order_id": ..., "title": ..., "priority": ..., "status": ...}``
    - ``ASSET_*``: ``{"asset_id": ..., "name": ..., "status": ...}``
    - ``PART_LOW_STOCK``: ``{"part_id": ..., "quantity": ..., "reorder_point": ...}``
    - ``AI_*``: ``{"provider": ..., "model": ..., "analysis_type": ..., ...}``
    - ``EVENT_HANDLER_FAILED``: ``{"event_id": ..., "event_type": ..., "handler": ...,
      "error": ...}``
    """

    PLUGIN_REGISTERED = "system.plugin.registered"
    PLUGIN_STARTED = "system.plugin.started"
    PLUGIN_STOPPED = "system.plugin.stopped"
    PLUGIN_ERROR = "system.plugin.error"

    SERVICE_REGISTERED = "system.service.registered"
    SERVICE_UNREGISTERED = "system.service.unregistered"
    SERVICE_HEALTHY = "system.service.healthy"
    SERVICE_UNHEALTHY = "system.service.unhealthy"
    SERVICE_RECOVERED = "system.service.recovered"

    USER_LOGIN = "user.login"
    USER_LOGOUT = "user.logout"
    USER_CREATED = "user.created"

    WORK_ORDER_CREATED = "cmms.work_order.created"
    WORK_ORDER_UPDATED = "cmms.work_order.updated"
    WORK_ORDER_ASSIGNED = "cmms.work_order.assigned"
    WORK_ORDER_STATUS_CHANGED = "cmms.work_order.status_changed"
    WORK_ORDER_COMPLETED = "cmms.work_order.completed"
    WORK_ORDER_OVERDUE = "cmms.work_order.overdue"

    ASSET_CREATED = "cmms.asset.created"
    ASSET_UPDATED = "cmms.asset.updated"
    ASSET_STATUS_CHANGED = "cmms.asset.status_changed"
    ASSET_MAINTENANCE_DUE = "cmms.asset.maintenance_due"

    PART_LOW_STOCK = "cmms.part.low_stock"

    AI_ANALYSIS_COMPLETED = "ai.analysis.completed"
    AI_ANALYSIS_FAILED = "ai.analysis.failed"
    AI_PREDICTION_GENERATED = "ai.prediction.generated"

    EVENT_HANDLER_FAILED = "system.event.handler_failed"

    @classmethod
    def all(cls) -> dict[str, str]:
        """Every constant name with its event type."""
        return {name: value for name, value in vars(cls).items() if name.isupper()}
