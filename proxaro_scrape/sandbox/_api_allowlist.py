"""The sandbox API's allowlist: ``GET|POST /v1/allowlist`` and ``DELETE /v1/allowlist/{id}``."""

from __future__ import annotations

import ipaddress

from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox._api_envelope import JSON, APIFailure
from proxaro_scrape.sandbox._api_routing import Call, endpoint, optional_str, required_str
from proxaro_scrape.sandbox.world import AllowlistEntry, World

__all__ = ["MAX_LABEL", "MIN_PREFIX"]

MAX_LABEL = 80
#: Shortest prefix accepted on the allowlist ("Max prefix: /24 for IPv4, /48 for IPv6").
MIN_PREFIX = {4: 24, 6: 48}


def _my_allowlist(world: World) -> list[AllowlistEntry]:
    return [e for e in world.allowlist if e.account_id == world.account.id]


@endpoint("GET", "/v1/allowlist")
async def allowlist(world: World, call: Call) -> JSON:
    """``GET /v1/allowlist``."""
    # The reference's list items carry no "object" (its POST answer does): mirror it, so
    # that a client does not come to rely on a field the real API may not send.
    return {
        "object": "list",
        "data": [
            {k: v for k, v in objects.allowlist_entry_object(e).items() if k != "object"}
            for e in _my_allowlist(world)
        ],
    }


@endpoint("POST", "/v1/allowlist", write=True, body=("cidr", "label"))
async def allowlist_add(world: World, call: Call) -> JSON:
    """``POST /v1/allowlist``."""
    cidr = required_str(call.body, "cidr")
    label = optional_str(call.body, "label")
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"{cidr!r} is not an IPv4 / IPv6 address or CIDR.",
                param="cidr",
            ) from None
        raise APIFailure(
            422,
            "cidr_host_bits_set",
            f"{cidr} has host bits set; the network is {loose}.",
            param="cidr",
        ) from None
    shortest = MIN_PREFIX[net.version]
    if net.prefixlen < shortest:
        raise APIFailure(
            422,
            "prefix_too_short",
            f"{net} is too wide: the allowlist takes IPv{net.version} prefixes of "
            f"/{shortest} or narrower.",
            param="cidr",
        )
    if label is not None and len(label) > MAX_LABEL:
        raise APIFailure(
            422,
            "label_too_long",
            f"The label is {len(label)} characters long; the maximum is {MAX_LABEL}.",
            param="label",
        )
    normalized = str(net)
    for existing in _my_allowlist(world):
        if ipaddress.ip_network(existing.cidr, strict=False) == net:
            raise APIFailure(
                409,
                "already_on_allowlist",
                f"{normalized} is already on the allowlist ({existing.id}).",
                param="cidr",
            )
    entry = AllowlistEntry(
        world.new_id("al"), normalized, label, world.clock.now(), world.account.id
    )
    world.allowlist.append(entry)
    world.note("allowlist_added", id=entry.id, cidr=entry.cidr)
    shown = objects.allowlist_entry_object(entry)
    world.emit("allowlist.updated", {**shown, "action": "added"})
    return shown


@endpoint("DELETE", "/v1/allowlist/{id}", write=True)
async def allowlist_remove(world: World, call: Call) -> JSON:
    """``DELETE /v1/allowlist/{id}``."""
    entry_id = call.match("id")
    entry = next((e for e in _my_allowlist(world) if e.id == entry_id), None)
    if entry is None:
        raise APIFailure(404, "resource_missing", f"No allowlist entry {entry_id!r}.", param="id")
    world.allowlist.remove(entry)
    world.note("allowlist_removed", id=entry.id, cidr=entry.cidr)
    world.emit("allowlist.updated", {**objects.allowlist_entry_object(entry), "action": "removed"})
    return {"object": "allowlist_entry", "id": entry.id, "deleted": True}
