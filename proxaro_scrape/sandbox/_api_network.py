"""The sandbox API's gateway and network resources: ``/v1/credentials`` (and its rotation),
``/v1/sessions``, ``/v1/countries`` and ``/v1/countries/{code}/asns``."""

from __future__ import annotations

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox._api_envelope import JSON, APIFailure, paginate
from proxaro_scrape.sandbox._api_routing import Call, endpoint
from proxaro_scrape.sandbox.world import World

# ---------------------------------------------------------------------------- gateway


@endpoint("GET", "/v1/credentials")
async def credentials(world: World, call: Call) -> JSON:
    """``GET /v1/credentials``."""
    return objects.credentials_object(world)


@endpoint("POST", "/v1/credentials/rotate", write=True)
async def rotate_credentials(world: World, call: Call) -> JSON:
    """``POST /v1/credentials/rotate``."""
    world.rotate_credentials()  # emits credentials.rotated
    return objects.rotated_credentials_object(world)


@endpoint("GET", "/v1/sessions", query=("limit", "cursor", "exit_class"))
async def sessions(world: World, call: Call) -> JSON:
    """``GET /v1/sessions``."""
    limit = call.int_param("limit", 100, 1, 1000)
    exit_class = call.choice_param("exit_class", protocol.EXIT_CLASSES)
    recent = [
        s for s in world.recent_sessions() if exit_class is None or s.exit_class == exit_class
    ]
    return paginate(
        "sessions",
        recent,
        lambda s: (s.started_at, s.id),
        objects.session_object,
        limit,
        call.query.get("cursor"),
    )


# ---------------------------------------------------------------------------- network


@endpoint("GET", "/v1/countries")
async def countries(world: World, call: Call) -> JSON:
    """``GET /v1/countries``."""
    return {
        "object": "list",
        "data": [objects.country_object(c) for c in world.countries.values()],
    }


@endpoint("GET", "/v1/countries/{code}/asns")
async def country_asns(world: World, call: Call) -> JSON:
    """``GET /v1/countries/{code}/asns``."""
    if not world.asn_allowed():
        raise APIFailure(
            403,
            "scope_required",
            f"ASN-level targeting is available on Growth and above; this account is on "
            f"{world.plan['name']}.",
        )
    code = call.match("code")
    country = world.countries.get(code)
    if country is None:
        hint = " (country codes are lower case)" if code.lower() in world.countries else ""
        raise APIFailure(
            404, "resource_missing", f"No country {code!r} in the pool{hint}.", param="code"
        )
    return {
        "object": "list",
        "data": [objects.asn_object(country, a) for a in world.asns.get(code, [])],
    }
