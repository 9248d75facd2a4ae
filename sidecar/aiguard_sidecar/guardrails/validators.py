"""Checks that turn a regular-expression match into a finding, or reject it.

A pattern finds text of the right shape; a validator decides whether it is the real thing.
Every function here is pure, takes the matched text, and runs in microseconds: they are only
called for the (rare) candidates a Hyperscan pass reports, never over the whole text.

    luhn, card_issuer         payment cards: checksum, issuer prefix (IIN) and length
    iban_valid                IBAN: country, country-specific length, ISO 7064 mod-97 checksum
    ssn_valid, itin_valid     US SSN / ITIN number rules
    phone_shape_ok            phone numbers: digit count, grouping, not a date
    email_valid               e-mail local part and domain labels
    ipv4_valid, ipv6_valid    IP addresses (through :mod:`ipaddress`)
    nhs_valid, nino_valid, aadhaar_valid (Verhoeff), es_nif_valid, it_fiscal_code_valid,
    sg_nric_valid, btc_address_valid (Base58Check / Bech32)
    shannon_entropy           bits per character, for secrets
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections import Counter
from typing import Final

# --------------------------------------------------------------------------------------------
# Payment cards


_NOT_ASCII_DIGIT: Final = re.compile(r"[^0-9]+")


def digits_only(value: str) -> str:
    return _NOT_ASCII_DIGIT.sub("", value)


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a string of ASCII digits."""
    if not digits or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# (lowest prefix, highest prefix, number of prefix digits, allowed lengths, issuer)
_IIN: Final[tuple[tuple[int, int, int, frozenset[int], str], ...]] = (
    (4, 4, 1, frozenset({13, 16, 19}), "visa"),
    (51, 55, 2, frozenset({16}), "mastercard"),
    (2221, 2720, 4, frozenset({16}), "mastercard"),
    (34, 34, 2, frozenset({15}), "amex"),
    (37, 37, 2, frozenset({15}), "amex"),
    (300, 305, 3, frozenset(range(14, 20)), "diners"),
    (3095, 3095, 4, frozenset(range(14, 20)), "diners"),
    (36, 36, 2, frozenset(range(14, 20)), "diners"),
    (38, 39, 2, frozenset(range(14, 20)), "diners"),
    (6011, 6011, 4, frozenset(range(16, 20)), "discover"),
    (644, 649, 3, frozenset(range(16, 20)), "discover"),
    (65, 65, 2, frozenset(range(16, 20)), "discover"),
    (35, 35, 2, frozenset(range(16, 20)), "jcb"),  # JCB's 3528-3589; the 35 block is JCB's
    (1800, 1800, 4, frozenset({15}), "jcb"),
    (2131, 2131, 4, frozenset({15}), "jcb"),
    (62, 62, 2, frozenset(range(16, 20)), "unionpay"),
    (81, 82, 2, frozenset(range(16, 20)), "unionpay/rupay"),
    (60, 60, 2, frozenset({16}), "rupay"),
    (2200, 2204, 4, frozenset(range(16, 20)), "mir"),
    (9792, 9792, 4, frozenset({16}), "troy"),
    (637, 639, 3, frozenset({16}), "instapayment"),
    # Maestro: 12-19 digits, IINs 50, 56-69 (ISO/IEC 7812 banking range) and the historic 0604.
    (50, 50, 2, frozenset(range(12, 20)), "maestro"),
    (56, 69, 2, frozenset(range(12, 20)), "maestro"),
    (604, 604, 4, frozenset(range(12, 20)), "maestro"),
)


def _iin_table() -> tuple[tuple[int, dict[str, list[tuple[frozenset[int], str]]]], ...]:
    """Per prefix width, the first ``width`` digits → (lengths, issuer) in table order."""
    out = []
    for width in (1, 2, 3, 4):
        by_prefix: dict[str, list[tuple[frozenset[int], str]]] = {}
        for low, high, w, lengths, issuer in _IIN:
            if w == width:
                for p in range(low, high + 1):
                    by_prefix.setdefault(str(p).zfill(width), []).append((lengths, issuer))
        out.append((width, by_prefix))
    return tuple(out)


_IIN_BY_WIDTH: Final = _iin_table()


def card_issuer(digits: str) -> str | None:
    """The issuer whose IIN range and length fit ``digits``, if any (no checksum test)."""
    n = len(digits)
    if not 12 <= n <= 19 or not digits.isdigit():
        return None
    if not digits.isascii():  # other scripts' digits: compare the numeric values
        for low, high, width, lengths, issuer in sorted(_IIN, key=lambda row: row[2]):
            if low <= int(digits[:width]) <= high and n in lengths:
                return issuer
        return None
    for width, by_prefix in _IIN_BY_WIDTH:
        for lengths, issuer in by_prefix.get(digits[:width], ()):
            if n in lengths:
                return issuer
    return None


_CARD_GROUPS = re.compile(r"\d+")


def card_grouping_ok(value: str) -> bool:
    """Separators, if any, are one kind (space or dash) between groups of 2-6 digits."""
    seps = {c for c in set(value) if not c.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:
        return False
    groups = _CARD_GROUPS.findall(value)
    if any(len(g) > 6 for g in groups) or any(len(g) < 2 for g in groups[:-1]):
        return False
    return len(groups[0]) >= 4  # every scheme's first group is 4 digits


def card_valid(value: str) -> bool:
    digits = digits_only(value)
    return card_grouping_ok(value) and card_issuer(digits) is not None and luhn(digits)


# --------------------------------------------------------------------------------------------
# IBAN

# ISO 13616 registry (SWIFT IBAN registry, plus the countries that use IBANs "experimentally").
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
    # experimental / national use
    "AO": 25, "BF": 28, "BJ": 28, "CF": 27, "CG": 27, "CI": 28, "CM": 27, "CV": 25,
    "DZ": 26, "GA": 27, "GQ": 27, "GW": 25, "IR": 26, "KM": 27, "MA": 28, "MG": 27,
    "ML": 28, "MZ": 25, "NE": 28, "SN": 28, "TD": 27, "TG": 28,
}  # fmt: skip


def iban_valid(value: str) -> bool:
    """Country code, that country's length, and the mod-97 checksum (ISO 7064)."""
    s = value.replace(" ", "").upper()
    if len(s) < 15 or not s.isalnum() or not s.isascii():
        return False
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit():
        return False
    # letters become 10..35 (int(c, 36)), digits stay; one big integer, one modulo
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


# --------------------------------------------------------------------------------------------
# US SSN / ITIN

# Numbers published in advertising or otherwise known to be invalid.
_SSN_INVALID: Final = frozenset({"078051120", "219099999", "123456789", "457555462"})


def ssn_valid(value: str) -> bool:
    """SSA rules: no area 000, 666 or 900-999, no group 00, no serial 0000, no known fakes."""
    digits = digits_only(value)
    if len(digits) != 9:
        return False
    seps = [c for c in value if not c.isdigit()]
    if seps and (len(seps) != 2 or seps[0] != seps[1]):
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in _SSN_INVALID and len(set(digits)) > 1


def itin_valid(value: str) -> bool:
    """IRS ITIN: 9XX-[50-65|70-88|90-92|94-99]-XXXX."""
    digits = digits_only(value)
    if len(digits) != 9 or digits[0] != "9":
        return False
    group = int(digits[3:5])
    return 50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or 94 <= group <= 99


# --------------------------------------------------------------------------------------------
# Phone numbers

_DIGIT_RUNS = re.compile(r"\d+")
_EXTENSION = re.compile(r"(?:\s*(?:x|ext\.?|extension|#)\s*\d{1,6})$", re.IGNORECASE)


def _is_date(a: str, b: str, c: str) -> bool:
    if len(a) == 4 and 1900 <= int(a) <= 2099:
        month_day = 1 <= int(b) <= 12 and 1 <= int(c) <= 31
        return month_day or (1 <= int(c) <= 12 and 1 <= int(b) <= 31)
    if len(c) == 4 and 1900 <= int(c) <= 2099:
        return 1 <= int(a) <= 31 and 1 <= int(b) <= 31
    return False


def _looks_like_date(groups: list[str]) -> bool:
    """``2021-04-16``, ``16.04.2021``, ``4/16/2021``, also when followed by a time
    (``2021 04 16 14 30``)."""
    if len(groups) < 3:
        return False
    return _is_date(*groups[:3]) or _is_date(*groups[-3:])


def phone_shape_ok(value: str, *, min_digits: int = 7, max_digits: int = 15) -> bool:
    """Digit count within E.164 limits (extension excluded), not a date, not one repeated
    digit, parentheses balanced."""
    main = _EXTENSION.sub("", value)
    groups = _DIGIT_RUNS.findall(main)
    n = sum(len(g) for g in groups)
    if not min_digits <= n <= max_digits:
        return False
    if main.count("(") != main.count(")"):
        return False
    if _looks_like_date(groups):
        return False
    if len(groups) == 2 and "." in main and not any(c in main for c in " -()"):
        return False  # 11614.72 is a decimal number
    digits = "".join(groups)
    return len(set(digits)) > 2


# --------------------------------------------------------------------------------------------
# E-mail, IP addresses

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def email_valid(value: str) -> bool:
    local, sep, domain = value.rpartition("@")
    if not sep or not local or len(local) > 64 or len(domain) > 253:
        return False
    if local[0] == "." or local[-1] == "." or ".." in local:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2:
        return False
    return all(_LABEL.match(label) for label in labels)


def ipv4_valid(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


_HEX_LETTER = re.compile(r"[a-fA-F]")


def ipv6_valid(value: str) -> bool:
    """A real IPv6 address that does not read as a word or a clock time."""
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    groups = [g for g in value.split(":") if g]
    if "::" not in value and len(groups) != 8 and "." not in value:
        return False
    # "dead::beef", "add::" are words; require a digit somewhere
    return any(c.isdigit() for c in value) and (len(groups) >= 2 or value.startswith("::"))


def mac_valid(value: str) -> bool:
    seps = {c for c in value if c in ":-"}
    return len(seps) == 1 and value.lower() not in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")


# --------------------------------------------------------------------------------------------
# National identifiers with checksums


def nhs_valid(value: str) -> bool:
    """UK NHS number: 10 digits, mod-11 check digit."""
    digits = digits_only(value)
    if len(digits) != 10 or len(set(digits)) == 1:
        return False
    total = sum(int(d) * (10 - i) for i, d in enumerate(digits[:9]))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


_NINO = re.compile(r"^[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]$")
_NINO_BAD_PREFIX: Final = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})


def nino_valid(value: str) -> bool:
    """UK National Insurance number: two letters (with HMRC's exclusions), six digits, A-D."""
    s = value.replace(" ", "").upper()
    return bool(_NINO.match(s)) and s[:2] not in _NINO_BAD_PREFIX


_VERHOEFF_D: Final = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6), (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4), (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)  # fmt: skip
_VERHOEFF_P: Final = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2), (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)  # fmt: skip


def verhoeff(digits: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][ord(ch) - 48]]
    return c == 0


def aadhaar_valid(value: str) -> bool:
    """India Aadhaar: 12 digits, not starting 0/1, Verhoeff checksum, not a palindrome."""
    digits = digits_only(value)
    return (
        len(digits) == 12 and digits[0] not in "01" and digits != digits[::-1] and verhoeff(digits)
    )


_NIF_LETTERS: Final = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_nif_valid(value: str) -> bool:
    """Spain DNI/NIF (8 digits + letter) and NIE (X/Y/Z + 7 digits + letter)."""
    s = value.replace("-", "").replace(" ", "").upper()
    if len(s) != 9:
        return False
    head = s[:8]
    if head[0] in "XYZ":
        head = str("XYZ".index(head[0])) + head[1:]
    if not head.isdigit():
        return False
    return _NIF_LETTERS[int(head) % 23] == s[8]


_CF_ODD: Final[dict[str, int]] = dict(
    zip(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20,
         11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23),
        strict=True,
    )
)  # fmt: skip


def it_fiscal_code_valid(value: str) -> bool:
    """Italy codice fiscale: 16 characters, the last a check letter over the first 15."""
    s = value.upper()
    if len(s) != 16 or not s.isalnum():
        return False
    total = 0
    for i, ch in enumerate(s[:15]):
        if i % 2 == 0:
            total += _CF_ODD[ch]
        else:
            total += int(ch) if ch.isdigit() else ord(ch) - 65
    return chr(65 + total % 26) == s[15]


def sg_nric_valid(value: str) -> bool:
    """Singapore NRIC/FIN: prefix letter, 7 digits, check letter."""
    s = value.upper()
    if len(s) != 9 or s[0] not in "STFGM" or not s[1:8].isdigit():
        return False
    weights = (2, 7, 6, 5, 4, 3, 2)
    total = sum(int(d) * w for d, w in zip(s[1:8], weights, strict=True))
    if s[0] in "TG":
        total += 4
    elif s[0] == "M":
        total += 3
    r = total % 11
    if s[0] in "ST":
        table = "JZIHGFEDCBA"
    elif s[0] in "FG":
        table = "XWUTRQPNMLK"
    else:
        table = "KLJNPQRTUWX"
    return table[r] == s[8]


# --------------------------------------------------------------------------------------------
# Cryptocurrency addresses

_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _base58check(value: str) -> bool:
    n = 0
    for ch in value:
        i = _B58.find(ch)
        if i < 0:
            return False
        n = n * 58 + i
    raw = n.to_bytes(25, "big") if n.bit_length() <= 200 else b""
    if len(raw) != 25:
        return False
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


def _bech32_polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _bech32(value: str) -> bool:
    s = value.lower()
    hrp, sep, data = s.rpartition("1")
    if not sep or hrp != "bc" or len(data) < 6 or any(c not in _BECH32 for c in data):
        return False
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    values += [_BECH32.index(c) for c in data]
    return _bech32_polymod(values) in (1, 0x2BC830A3)  # bech32, bech32m


def btc_address_valid(value: str) -> bool:
    if value[:3].lower() == "bc1":
        return _bech32(value)
    return value[:1] in "13" and _base58check(value)


# --------------------------------------------------------------------------------------------
# Entropy


def shannon_entropy(value: str) -> float:
    """Shannon entropy in bits per character (0 for ``""``)."""
    n = len(value)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())
