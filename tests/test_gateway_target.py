"""Target: the username grammar (gateway-protocol.md section 1) and syntactic validation."""

from __future__ import annotations

from typing import Any

import pytest

from proxaro_scrape import Target, TargetError
from proxaro_scrape.gateway import HEALTHY_ASN

BASE = "nb_growth_a1b2c3d4"


@pytest.mark.parametrize(
    ("kwargs", "suffix"),
    [
        ({}, ""),
        ({"country": "us"}, "-country-us"),
        ({"country": "us", "city": "new_york"}, "-country-us-city-new_york"),
        ({"country": "us", "city": "New York"}, "-country-us-city-new_york"),
        ({"country": "us", "city": "  Los   Angeles "}, "-country-us-city-los_angeles"),
        ({"country": "de", "asn": "3320"}, "-country-de-asn-3320"),
        ({"country": "de", "asn": 3320}, "-country-de-asn-3320"),
        ({"exit_class": "mobile_5g"}, "-class-mobile_5g"),
        ({"country": "gb", "exit_class": "isp"}, "-country-gb-class-isp"),
        ({"session": "cart42"}, "-session-cart42"),
        ({"session": "Cart42"}, "-session-Cart42"),  # the session is case-sensitive
        ({"session": "cart42", "session_ttl": 30}, "-session-cart42-sesstime-30"),
        ({"session": "a" * 32, "session_ttl": 1}, "-session-" + "a" * 32 + "-sesstime-1"),
        ({"session": "x", "session_ttl": 1440}, "-session-x-sesstime-1440"),
        (
            {
                # keyword order differs from the grammar's: the encoding follows the grammar
                "session_ttl": 5,
                "session": "s1",
                "exit_class": "residential",
                "asn": "7922",
                "city": "chicago",
                "country": "us",
            },
            "-country-us-city-chicago-asn-7922-class-residential-session-s1-sesstime-5",
        ),
    ],
)
def test_username_encoding(kwargs: dict[str, Any], suffix: str) -> None:
    assert Target(**kwargs).username(BASE) == BASE + suffix


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"country": "US"}, "country"),
        ({"country": "usa"}, "country"),
        ({"country": "u"}, "country"),
        ({"country": "u1"}, "country"),
        ({"country": ""}, "country"),
        ({"country": 1}, "country"),
        ({"country": "us", "city": "new-york"}, "city"),
        ({"country": "us", "city": "são_paulo"}, "city"),
        ({"country": "us", "city": ""}, "city"),
        ({"country": "us", "city": 5}, "city"),
        ({"city": "paris"}, "city"),
        ({"asn": "7922"}, "asn"),
        ({"country": "us", "asn": "AS7922"}, "asn"),
        ({"country": "us", "asn": "as7922"}, "asn"),
        ({"country": "us", "asn": "79x22"}, "asn"),
        ({"country": "us", "asn": ""}, "asn"),
        ({"country": "us", "asn": -1}, "asn"),
        ({"country": "us", "asn": True}, "asn"),
        ({"country": "us", "asn": 7.5}, "asn"),
        ({"exit_class": "mobile"}, "exit_class"),
        ({"exit_class": "Residential"}, "exit_class"),
        ({"session": ""}, "session"),
        ({"session": "a" * 33}, "session"),
        ({"session": "cart-42"}, "session"),
        ({"session": "cart_42"}, "session"),
        ({"session": 42}, "session"),
        ({"session": "s", "session_ttl": 0}, "session_ttl"),
        ({"session": "s", "session_ttl": 1441}, "session_ttl"),
        ({"session": "s", "session_ttl": 2.5}, "session_ttl"),
        ({"session": "s", "session_ttl": "10"}, "session_ttl"),
        ({"session": "s", "session_ttl": True}, "session_ttl"),
        ({"session_ttl": 10}, "session_ttl"),
        ({"countries": "de"}, "countries"),
        ({"countries": []}, "countries"),
        ({"countries": ["de", "FR"]}, "countries"),
        ({"country": "de", "countries": ["fr", "it"]}, "country"),
        ({"continent": ""}, "continent"),
        ({"continent": "Europe", "country": "de"}, "continent"),
        ({"countries": ["de", "fr"], "city": "paris"}, "city"),
        ({"continent": "Europe", "asn": "3320"}, "asn"),
    ],
)
def test_malformed_targets_raise_naming_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(TargetError) as info:
        Target(**kwargs)
    assert info.value.param == param
    assert isinstance(info.value, ValueError)  # TargetError is a ConfigurationError(ValueError)


def test_uppercase_country_error_suggests_the_lowercase_code() -> None:
    with pytest.raises(TargetError, match="'us'"):
        Target(country="US")


def test_coerce() -> None:
    assert Target.coerce(None) is None
    t = Target(country="us")
    assert Target.coerce(t) is t
    assert Target.coerce({"country": "us", "class": "isp", "session": "a", "sesstime": 3}) == (
        Target(country="us", exit_class="isp", session="a", session_ttl=3)
    )
    assert Target.coerce({"exit_class": "isp"}) == Target(exit_class="isp")
    with pytest.raises(TargetError) as info:
        Target.coerce({"county": "us"})
    assert info.value.param == "county"
    with pytest.raises(TargetError):
        Target.coerce({"class": "isp", "exit_class": "isp"})
    with pytest.raises(TargetError) as info:
        Target.coerce("us")  # type: ignore[arg-type]
    assert info.value.param == "target"


def test_a_dict_target_is_checked_once_and_never_confused_with_an_equal_one() -> None:
    from proxaro_scrape.gateway import target as target_module

    spec = {"country": "de", "session": "basket", "sesstime": 1}
    first = Target.coerce(spec)
    assert Target.coerce(dict(spec)) is first  # the same check, found: no new object
    # True == 1 (and they hash alike), but only 1 is a number of minutes: checked, refused.
    with pytest.raises(TargetError, match="whole minutes"):
        Target.coerce({**spec, "sesstime": True})
    # A refused dict is refused every time; an unhashable one is checked every time.
    for _ in range(2):
        with pytest.raises(TargetError):
            Target.coerce({"country": "DE"})
    listed = {"country": ["de", "fr"]}
    assert Target.coerce(listed) == Target(countries=("de", "fr"))
    # Bounded, however many distinct dicts come.
    for i in range(target_module._COERCED_LIMIT + 10):
        Target.coerce({"session": f"s{i}"})
    assert len(target_module._COERCED) <= target_module._COERCED_LIMIT


def test_targets_are_frozen_hashable_and_comparable() -> None:
    a = Target(country="us", city="New York")
    b = Target(country="us", city="new_york")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    with pytest.raises(AttributeError):
        a.country = "de"  # type: ignore[misc]
    assert a.replace(city=None) == Target(country="us")
    with pytest.raises(TargetError):
        a.replace(country="XX")
    assert repr(Target(country="us", exit_class="isp")) == "Target(country='us', exit_class='isp')"
    assert Target(session="a", session_ttl=2).geo == Target()


def test_selectors() -> None:
    by_list = Target(country=["de", "fr"])  # type: ignore[arg-type]
    assert by_list.countries == ("de", "fr") and by_list.country is None
    assert by_list.is_selector
    assert Target(countries=("de", "de")) == Target(country="de")  # one country is no selector
    assert not Target(countries=["de"]).is_selector
    cont = Target(continent="  North   America ", exit_class="isp")
    assert cont.continent == "North America" and cont.is_selector
    assert Target(country="us", asn=HEALTHY_ASN).is_selector
    for selector in (by_list, cont, Target(country="us", asn=HEALTHY_ASN)):
        with pytest.raises(TargetError, match="selector"):
            selector.username(BASE)
    assert "continent=Europe" in Target(continent="Europe").describe()
    assert Target().describe() == "any"


def test_base_username_must_not_contain_a_dash() -> None:
    with pytest.raises(TargetError):
        Target(country="us").username("nb-bad")
    with pytest.raises(TargetError):
        Target().username("")


def test_targets_pickle_across_processes() -> None:
    import pickle
    import subprocess
    import sys

    t = Target(country="us", city="New York", session="abc", session_ttl=5)
    assert pickle.loads(pickle.dumps(t)) == t
    # another process (another str hash seed): the unpickled target still hashes like a new one
    code = (
        "import pickle, sys; from proxaro_scrape import Target; "
        "t = pickle.loads(sys.stdin.buffer.read()); "
        "print({Target(country='us', city='new_york', session='abc', session_ttl=5): 1}[t])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(t), capture_output=True, check=True
    )
    assert out.stdout.strip() == b"1"


def test_the_gateway_public_surface_is_pinned() -> None:
    import proxaro_scrape
    import proxaro_scrape.gateway as gateway

    assert gateway.__all__ == [
        "HEALTHY_ASN",
        "ExitInfo",
        "GatewayConfig",
        "GatewayManager",
        "Outcome",
        "RequestRouting",
        "Route",
        "Target",
        "classify",
    ]
    names = ("ExitInfo", "GatewayConfig", "GatewayManager", "Outcome", "RequestRouting", "Route")
    for name in (*names, "Target"):
        assert getattr(proxaro_scrape, name) is getattr(gateway, name)
        assert name in proxaro_scrape.__all__


_CODES = [f"{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"country": "us", "city": "a" * 64}, None),
        ({"country": "us", "city": "a" * 65}, "city"),
        ({"country": "us", "city": "x" * 100_000}, "city"),
        ({"country": "us", "asn": 1}, None),
        ({"country": "us", "asn": 0}, "asn"),
        ({"country": "us", "asn": 4_294_967_295}, None),
        ({"country": "us", "asn": 4_294_967_296}, "asn"),
        ({"country": "us", "asn": "4294967295"}, None),
        ({"country": "us", "asn": "9" * 5000}, "asn"),
        ({"continent": "E" * 32}, None),
        ({"continent": "E" * 33}, "continent"),
        ({"countries": _CODES[:250]}, None),
        ({"countries": _CODES[:251]}, "countries"),
        ({"session": "a" * 32}, None),
        ({"session": "a" * 33}, "session"),
    ],
)
def test_free_form_values_are_bounded_as_the_gateway_accepts(
    fields: dict[str, object], param: str | None
) -> None:
    if param is None:
        Target(**fields)  # type: ignore[arg-type]
        return
    with pytest.raises(TargetError) as info:
        Target(**fields)  # type: ignore[arg-type]
    assert info.value.param == param
    assert len(str(info.value)) < 200  # the value is never echoed whole
