"""2026-07-28 subscription streams: a `subscriptions/listen` request held open to carry list changes.

A stream is acknowledged first (`notifications/subscriptions/acknowledged`, naming the part of the
filter honoured: `toolsListChanged` where the tool list can change), then carries each
`notifications/tools/list_changed`; every message on it carries the stream's id, its request's id.
It stays in its session's `subscriptions` until the client cancels it or leaves, or the transport
ends it (`end_all`), which answers the request with an empty result. Runs on the session's loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

from transports.mcp import jsonrpc
from transports.mcp.session import NotificationSink, RequestContext, Session, held, took_back_own_cancel

__all__ = ["ACKNOWLEDGED", "SUBSCRIPTION_ID_KEY", "TOOLS_LIST_CHANGED", "Subscription", "end_all", "listen"]

SUBSCRIPTION_ID_KEY: Final = "io.modelcontextprotocol/subscriptionId"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
TOOLS_LIST_CHANGED: Final = "notifications/tools/list_changed"


@dataclass(eq=False)
class Subscription:
    """One open stream: where its messages go, and what it asked for and was granted."""

    subscription_id: str | int
    notify: NotificationSink
    tools: bool  # carries tools/list_changed
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, method: str, params: dict[str, Any] | None = None) -> None:
        meta = {SUBSCRIPTION_ID_KEY: self.subscription_id}
        self.notify({"jsonrpc": "2.0", "method": method, "params": {**(params or {}), "_meta": meta}})

    def tools_changed(self) -> None:
        if self.tools and not self.ended.is_set():
            self.send(TOOLS_LIST_CHANGED)


async def listen(session: Session, ctx: RequestContext, *, tools_can_change: bool) -> dict[str, Any] | None:
    """Serve one `subscriptions/listen` until it ends; its result, or None when the client cancelled it."""
    wanted = ctx.params.get("notifications") or {}
    tools = tools_can_change and wanted.get("toolsListChanged") is True
    subscription = Subscription(ctx.request.id, ctx.notify, tools=tools)
    key = jsonrpc.request_key(ctx.request.id)
    with held(session, ctx, "subscriptions/listen") as call:
        session.subscriptions[key] = subscription
        try:
            subscription.send(ACKNOWLEDGED, {"notifications": {"toolsListChanged": True} if tools else {}})
            try:
                await subscription.ended.wait()
            except asyncio.CancelledError:
                if not took_back_own_cancel(call):
                    raise  # the client left: nobody reads an answer
                if call.cancelled_by_client:
                    return None
            return {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_KEY: subscription.subscription_id}}
        finally:
            if session.subscriptions.get(key) is subscription:
                del session.subscriptions[key]


def end_all(session: Session) -> int:
    """End every stream of `session` gracefully (each request is answered); returns how many."""
    open_streams = [s for s in session.subscriptions.values() if not s.ended.is_set()]
    for subscription in open_streams:
        subscription.ended.set()
    return len(open_streams)
