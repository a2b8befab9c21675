"""The sandbox API's webhooks: create, list, rotate a secret, and list delivery attempts."""

from __future__ import annotations

from urllib.parse import urlsplit

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox._api_envelope import JSON, APIFailure, paginate
from proxaro_scrape.sandbox._api_routing import Call, endpoint, optional_str, required_str
from proxaro_scrape.sandbox.world import WebhookEndpoint, World


def _my_webhook(world: World, webhook_id: str) -> WebhookEndpoint:
    for hook in world.webhooks:
        if hook.id == webhook_id and hook.account_id == world.account.id:
            return hook
    raise APIFailure(404, "resource_missing", f"No webhook {webhook_id!r}.", param="id")


@endpoint("POST", "/v1/webhooks", write=True, body=("url", "events", "label"))
async def webhook_create(world: World, call: Call) -> JSON:
    """``POST /v1/webhooks``."""
    url = required_str(call.body, "url")
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc or not parts.hostname:
        raise APIFailure(400, "invalid_parameter", f"{url!r} is not a URL.", param="url")
    if parts.scheme.lower() != "https":
        raise APIFailure(
            422,
            "url_not_https",
            f"Webhook URLs must be HTTPS; {parts.scheme}:// is rejected.",
            param="url",
        )
    events = call.body.get("events")
    if events is None:
        raise APIFailure(
            400, "missing_parameter", "The 'events' parameter is required.", param="events"
        )
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise APIFailure(
            400,
            "invalid_parameter",
            "The 'events' parameter must be a list of event names.",
            param="events",
        )
    if not events:
        raise APIFailure(
            422,
            "events_empty",
            'Subscribe to at least one event (["*"] for everything).',
            param="events",
        )
    unknown = [e for e in events if e != "*" and e not in protocol.WEBHOOK_EVENTS]
    if unknown:
        raise APIFailure(
            422,
            "unknown_event",
            f"Unknown event(s) {', '.join(map(repr, unknown))}; events are "
            f"{', '.join(protocol.WEBHOOK_EVENTS)} or '*'.",
            param="events",
        )
    label = optional_str(call.body, "label")
    hook = WebhookEndpoint(
        id=world.new_id("wh"),
        url=url,
        events=list(dict.fromkeys(events)),
        label=label,
        secret=objects.new_webhook_secret(),
        created_at=world.clock.now(),
        account_id=world.account.id,
    )
    world.webhooks.append(hook)
    world.note("webhook_created", id=hook.id, url=hook.url, events=hook.events)
    return objects.webhook_object(hook, with_secret=True)


@endpoint("GET", "/v1/webhooks")
async def webhook_list(world: World, call: Call) -> JSON:
    """``GET /v1/webhooks``."""
    mine = [h for h in world.webhooks if h.account_id == world.account.id]
    return {"object": "list", "data": [objects.webhook_object(h) for h in mine]}


@endpoint("POST", "/v1/webhooks/{id}/rotate", write=True)
async def webhook_rotate(world: World, call: Call) -> JSON:
    """``POST /v1/webhooks/{id}/rotate``."""
    hook = _my_webhook(world, call.match("id"))
    hook.secret = objects.new_webhook_secret()
    world.note("webhook_secret_rotated", id=hook.id)
    return objects.webhook_object(hook, with_secret=True)


@endpoint("GET", "/v1/webhooks/{id}/attempts", query=("limit", "cursor"))
async def webhook_attempts(world: World, call: Call) -> JSON:
    """``GET /v1/webhooks/{id}/attempts``."""
    hook = _my_webhook(world, call.match("id"))
    limit = call.int_param("limit", 25, 1, 100)
    mine = [a for a in world.attempts if a.webhook_id == hook.id]
    return paginate(
        "attempts",
        mine,
        lambda a: (a.attempted_at, a.id),
        objects.webhook_attempt_object,
        limit,
        call.query.get("cursor"),
    )
