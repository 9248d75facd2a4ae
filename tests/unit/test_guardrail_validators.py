"""Validators: the checks that turn a pattern match into a finding or reject it."""

from __future__ import annotations

import pytest

from aiguard_sidecar.guardrails import validators as v


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("4111111111111111", True),  # Visa test number
        ("4111111111111112", False),  # checksum off by one
        ("5555555555554444", True),  # Mastercard
        ("2223003122003222", True),  # Mastercard 2-series
        ("378282246310005", True),  # Amex
        ("6011111111111117", True),  # Discover
        ("3530111333300000", True),  # JCB
        ("30569309025904", True),  # Diners
        ("6759649826438453", True),  # Maestro
        ("1234567812345670", False),  # Luhn-valid, no issuer starts with 1 at 16 digits
        ("4111111111111", False),  # Visa prefix, 13 digits, bad checksum
        ("41111111111111111111", False),  # 20 digits
    ],
)
def test_card_valid(number: str, ok: bool) -> None:
    assert v.card_valid(number) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("3782 822463 10005", True),  # Amex 4-6-5
        ("4111 1111-1111 1111", False),  # mixed separators
        ("41 11 11 11 11 11 11 11", False),  # first group must be 4 digits
        ("4111111 111111111", False),  # a group longer than 6
    ],
)
def test_card_grouping(value: str, ok: bool) -> None:
    assert v.card_valid(value) is ok


def test_luhn_rejects_non_digits() -> None:
    assert not v.luhn("")
    assert not v.luhn("4111-1111")
    assert v.luhn("79927398713")


@pytest.mark.parametrize(
    ("iban", "ok"),
    [
        ("GB82WEST12345698765432", True),
        ("GB82 WEST 1234 5698 7654 32", True),
        ("gb82west12345698765432", True),
        ("DE89370400440532013000", True),
        ("FR1420041010050500013M02606", True),
        ("NO9386011117947", True),
        ("GB82WEST12345698765433", False),  # checksum
        ("GB82WEST1234569876543", False),  # length for GB
        ("XX82WEST12345698765432", False),  # no such country
        ("DE89 3704 0044 0532 0130 00X", False),
    ],
)
def test_iban_valid(iban: str, ok: bool) -> None:
    assert v.iban_valid(iban) is ok


@pytest.mark.parametrize(
    ("ssn", "ok"),
    [
        ("536-22-1234", True),
        ("536 22 1234", True),
        ("536221234", True),
        ("000-12-3456", False),  # area 000
        ("666-12-3456", False),  # area 666
        ("912-34-5678", False),  # area 9xx (ITINs live there)
        ("536-00-1234", False),  # group 00
        ("536-22-0000", False),  # serial 0000
        ("078-05-1120", False),  # the Woolworth wallet number
        ("123-45-6789", False),  # the advertising example
        ("111-11-1111", False),  # one repeated digit
        ("222-22-2222", False),  # one repeated digit
        ("536-22 1234", False),  # mixed separators
    ],
)
def test_ssn_rules(ssn: str, ok: bool) -> None:
    assert v.ssn_valid(ssn) is ok


@pytest.mark.parametrize(
    ("itin", "ok"),
    [("912-70-1234", True), ("900-94-1234", True), ("912-93-1234", False), ("812-70-1234", False)],
)
def test_itin_rules(itin: str, ok: bool) -> None:
    assert v.itin_valid(itin) is ok


@pytest.mark.parametrize(
    ("phone", "ok"),
    [
        ("+1-202-555-0143", True),
        ("(202) 555-0143 x123", True),
        ("0490 75 40 81", True),
        ("2021-04-16", False),  # a date
        ("16.04.2021", False),
        ("2021 04 16 14 30", False),  # a date and a time
        ("123 456", False),  # too short
        ("1234567890123456", False),  # too long for E.164
        ("555 555 5555", False),  # one repeated digit pattern
        ("11614.72", False),  # a decimal number
    ],
)
def test_phone_shape(phone: str, ok: bool) -> None:
    assert v.phone_shape_ok(phone) is ok


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("john.doe@example.com", True),
        ("a+tag@sub.example.co.uk", True),
        (".john@example.com", False),
        ("john..doe@example.com", False),
        ("john@-example.com", False),
        ("john@example.c", False),
        ("john@example.123", False),
    ],
)
def test_email_valid(email: str, ok: bool) -> None:
    assert v.email_valid(email) is ok


def test_ip_addresses() -> None:
    assert v.ipv4_valid("192.168.0.1")
    assert not v.ipv4_valid("256.1.1.1")
    assert v.ipv6_valid("2001:db8::1")
    assert v.ipv6_valid("fe80::1")
    assert v.ipv6_valid("6e40:4041:c617:e898:c11:40d2:c669:2eb4")
    assert not v.ipv6_valid("dead::beef")  # a word, not an address
    assert not v.ipv6_valid("12:30:45")  # a clock time


@pytest.mark.parametrize(
    ("fn", "value", "ok"),
    [
        (v.nhs_valid, "943 476 5919", True),
        (v.nhs_valid, "943 476 5918", False),
        (v.nino_valid, "AB123456C", True),
        (v.nino_valid, "GB123456C", False),  # excluded prefix
        (v.nino_valid, "AB123456E", False),  # suffix A-D
        (v.aadhaar_valid, "2345 6789 0124", True),
        (v.aadhaar_valid, "2345 6789 0123", False),
        (v.es_nif_valid, "12345678Z", True),
        (v.es_nif_valid, "12345678A", False),
        (v.es_nif_valid, "X1234567L", True),
        (v.it_fiscal_code_valid, "RSSMRA85T10A562S", True),
        (v.it_fiscal_code_valid, "RSSMRA85T10A562T", False),
        (v.sg_nric_valid, "S1234567D", True),
        (v.sg_nric_valid, "S1234567A", False),
        (v.btc_address_valid, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", True),
        (v.btc_address_valid, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", False),
        (v.btc_address_valid, "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", True),
        (v.btc_address_valid, "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdz", False),
    ],
)
def test_national_ids_and_crypto(fn: object, value: str, ok: bool) -> None:
    assert callable(fn)
    assert fn(value) is ok


def test_shannon_entropy() -> None:
    assert v.shannon_entropy("") == 0.0
    assert v.shannon_entropy("aaaa") == 0.0
    assert v.shannon_entropy("abcd") == pytest.approx(2.0)
    assert v.shannon_entropy("0123456789abcdef") == pytest.approx(4.0)
