"""Generators of valid-looking personal data and secrets, one per pattern entity.

Values pass the checksums presidio validates (Luhn, mod 97, mod 11, Verhoeff, base58check,
Italian and Finnish check characters ...), so a miss in the corpus test is a detection
gap, not a bad test value. All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
from collections.abc import Callable

Gen = Callable[[random.Random], str]
HASH_KEY = b"test-hash-key-0123456789abcdef"  # the maskers' keyed-hash key in these tests
UPPER, LOWER, DIGITS = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM = UPPER + LOWER + DIGITS
FIRST = ["john", "maria", "wei", "fatima", "olga", "pierre", "aisha", "lars", "yuki", "diego"]
LAST = ["smith", "garcia", "chen", "khan", "ivanova", "martin", "okafor", "berg", "sato"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.io", "example.de",
           "uni.example.edu", "example.net"]


def pick(rng: random.Random, chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def email(rng: random.Random) -> str:
    sep = rng.choice([".", "_", "-", ""])
    return f"{rng.choice(FIRST)}{sep}{rng.choice(LAST)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    area, exchange, line = rng.choice([212, 415, 312, 617, 206]), rng.randint(201, 989), \
        rng.randint(1000, 9999)
    return rng.choice([
        f"+1 {area} {exchange} {line}", f"+1-{area}-{exchange}-{line}",
        f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}",
        f"+44 20 7946 {rng.randint(0, 999):04d}", f"+49 30 {rng.randint(1000000, 9999999)}",
        f"+33 1 42 68 {rng.randint(10, 99)} {rng.randint(10, 99)}",
    ])


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + pick(rng, DIGITS, length - len(prefix) - 1)
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def credit_card(rng: random.Random) -> str:
    number = _luhn_complete(rng.choice(["4", "51", "52", "55", "6011"]), 16, rng)
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def _iban(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def iban(rng: random.Random) -> str:
    country, bban = rng.choice([
        ("DE", pick(rng, DIGITS, 18)), ("GB", pick(rng, UPPER, 4) + pick(rng, DIGITS, 14)),
        ("NL", pick(rng, UPPER, 4) + pick(rng, DIGITS, 10)), ("ES", pick(rng, DIGITS, 20)),
    ])
    value = _iban(country, bban)
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < .5 \
        else value


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}." \
               f"{rng.randint(1, 254)}"
    return "2001:db8:" + ":".join(f"{rng.randint(0, 0xffff):x}" for _ in range(6))


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def crypto(rng: random.Random) -> str:
    payload = b"\x00" + bytes(rng.getrandbits(8) for _ in range(20))
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def us_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def us_itin(rng: random.Random) -> str:
    return f"9{rng.randint(0, 99):02d}-{rng.randint(70, 88)}-{rng.randint(0, 9999):04d}"


def uk_nhs(rng: random.Random) -> str:
    while True:
        digits = [rng.randint(0, 9) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            s = "".join(map(str, digits)) + str(0 if check == 11 else check)
            return f"{s[:3]} {s[3:6]} {s[6:]}"


def uk_nino(rng: random.Random) -> str:
    return f"{rng.choice('ABCEHJKLMPRSWY')}{rng.choice('ABCEHJKLMPRSTWY')} " \
           f"{rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.choice('ABCD')}"


_NIF = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_nif(rng: random.Random) -> str:
    n = rng.randint(10_000_000, 99_999_999)
    return f"{n}{_NIF[n % 23]}"


def es_nie(rng: random.Random) -> str:
    prefix, n = rng.choice("XYZ"), rng.randint(1_000_000, 9_999_999)
    return f"{prefix}{n}{_NIF[int(str('XYZ'.index(prefix)) + str(n)) % 23]}"


_ODD = {**dict(zip(DIGITS, [1, 0, 5, 7, 9, 13, 15, 17, 19, 21], strict=True)),
        **dict(zip(UPPER, [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12,
                           14, 16, 10, 22, 25, 24, 23], strict=True))}


def it_fiscal_code(rng: random.Random) -> str:
    consonants = "BCDFGHLMNPRSTVZ"
    body = (pick(rng, consonants, 2) + rng.choice(UPPER) + pick(rng, consonants, 2)
            + rng.choice(UPPER) + f"{rng.randint(40, 99)}" + rng.choice("ABCDEHLMPRST")
            + f"{rng.randint(1, 28):02d}" + rng.choice("ABCDEFGHL") + f"{rng.randint(100, 999)}")
    total = sum(_ODD[c] if i % 2 == 0 else (int(c) if c.isdigit() else UPPER.index(c))
                for i, c in enumerate(body))
    return body + UPPER[total % 26]


def pl_pesel(rng: random.Random) -> str:
    digits = f"{rng.randint(50, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" \
             f"{rng.randint(0, 9999):04d}"
    weights = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3]
    return digits + str((10 - sum(int(d) * w for d, w in zip(digits, weights, strict=True))
                         % 10) % 10)


def sg_nric(rng: random.Random) -> str:
    digits = pick(rng, DIGITS, 7)
    total = sum(int(d) * w for d, w in zip(digits, [2, 7, 6, 5, 4, 3, 2], strict=True))
    return f"S{digits}{'JZIHGFEDCBA'[total % 11]}"


def au_tfn(rng: random.Random) -> str:
    weights = [1, 4, 3, 7, 5, 8, 6, 9, 10]
    while True:
        digits = [rng.randint(0, 9) for _ in range(9)]
        if digits[0] and sum(d * w for d, w in zip(digits, weights, strict=True)) % 11 == 0:
            s = "".join(map(str, digits))
            return f"{s[:3]} {s[3:6]} {s[6:]}"


def in_pan(rng: random.Random) -> str:
    return f"{pick(rng, UPPER, 3)}{rng.choice('ABCFGHLJPT')}{rng.choice(UPPER)}" \
           f"{rng.randint(1000, 9999)}{rng.choice(UPPER)}"


_VD = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
       [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
       [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
       [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
       [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VP = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
       [5, 8, 0, 3, 7, 9, 6, 1, 4, 2], [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
       [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
       [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
_VINV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def in_aadhaar(rng: random.Random) -> str:
    body = str(rng.randint(2, 9)) + pick(rng, DIGITS, 10)
    c = 0
    for i, d in enumerate(reversed(body)):
        c = _VD[c][_VP[(i + 1) % 8][int(d)]]
    s = body + str(_VINV[c])
    return f"{s[:4]} {s[4:8]} {s[8:]}"


def fi_hetu(rng: random.Random) -> str:
    date = f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(50, 99)}"
    serial = f"{rng.randint(2, 899):03d}"
    return f"{date}-{serial}{'0123456789ABCDEFHJKLMNPRSTUVWXY'[int(date + serial) % 31]}"


def api_key(rng: random.Random) -> str:
    return rng.choice([
        "sk-" + pick(rng, ALNUM, 48), "sk-proj-" + pick(rng, ALNUM + "_-", 56),
        "ghp_" + pick(rng, ALNUM, 36), "AIza" + pick(rng, ALNUM + "_-", 35),
        "hf_" + pick(rng, ALNUM, 34), "xoxb-" + pick(rng, DIGITS, 12) + "-" + pick(rng, ALNUM, 24),
        pick(rng, UPPER, 8) + pick(rng, DIGITS, 8) + pick(rng, LOWER, 8) + pick(rng, ALNUM, 16),
    ])


def aws_key(rng: random.Random) -> str:
    return rng.choice(["AKIA", "ASIA"]) + pick(rng, UPPER + "234567", 16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    claims = {"sub": pick(rng, DIGITS, 10), "iat": rng.randint(1_600_000_000, 1_800_000_000)}
    return ".".join([_b64(b'{"alg":"HS256","typ":"JWT"}'), _b64(json.dumps(claims).encode()),
                     _b64(bytes(rng.getrandbits(8) for _ in range(32)))])


def bearer(rng: random.Random) -> str:
    return rng.choice(["ya29.", "gho_", "tok_", ""]) + pick(rng, ALNUM + "-_", 40)


GENERATORS: dict[str, Gen] = {
    "EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "CREDIT_CARD": credit_card,
    "IBAN_CODE": iban, "IP_ADDRESS": ip_address, "CRYPTO": crypto, "US_SSN": us_ssn,
    "US_ITIN": us_itin, "UK_NHS": uk_nhs, "UK_NINO": uk_nino, "ES_NIF": es_nif,
    "ES_NIE": es_nie, "IT_FISCAL_CODE": it_fiscal_code, "PL_PESEL": pl_pesel,
    "SG_NRIC_FIN": sg_nric, "AU_TFN": au_tfn, "IN_PAN": in_pan, "IN_AADHAAR": in_aadhaar,
    "FI_PERSONAL_IDENTITY_CODE": fi_hetu, "API_KEY": api_key, "AWS_ACCESS_KEY_ID": aws_key,
    "JWT": jwt, "BEARER_TOKEN": bearer,
}
