"""PII and secrets: Presidio with the registry spaCy model and our recognizers. Fixtures are our own text."""

from __future__ import annotations

import pytest

from guards import pii
from guards.pii import SECRET_ENTITIES, anonymize, scan_pii

GH = "ghp_" + "Zx9" * 12
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq2l0n0tAbCdEfGh\nq2l0n0tAbCdEfGhIjK==\n-----END RSA PRIVATE KEY-----"
PEM_NO_END = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Vj1q2Lm8\n"
              "Zx9Yw3Kp4Rt6Uv8Ab0Cd2Ef4Gh6Ij8Kl0Mn2Op4Qr6St8Uv0Wx2Yz4Ab6Cd8Ef0Gh")


def entities(text: str) -> dict[str, str]:
    return {f.entity: text[f.start : f.end] for f in scan_pii(text).findings}


@pytest.mark.parametrize(
    "text, entity, value",
    [
        (
            "export AWS_ACCESS_KEY_ID=AKIAZ7QW3RT5YU8IOP2A",
            "AWS_ACCESS_KEY",
            "AKIAZ7QW3RT5YU8IOP2A",
        ),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_SECRET_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (f"use token {GH} for the CI", "GITHUB_TOKEN", GH),
        (
            "SLACK_BOT=xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
            "SLACK_TOKEN",
            "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        ),
        (f"Authorization: Bearer {JWT}", "JWT", JWT),
        (f"key file:\n{PEM}\n", "PRIVATE_KEY", PEM),
        (
            "DATABASE_URL=postgres://app:s3cr3t-pw@db.internal:5432/main",
            "URL_PASSWORD",
            "postgres://app:s3cr3t-pw@db.internal:5432",
        ),
        (
            "OPENAI_API_KEY=sk-proj-4f9Qx2LmN8pR3tV7wY1zA5bC",
            "API_KEY",
            "sk-proj-4f9Qx2LmN8pR3tV7wY1zA5bC",
        ),
        ("stripe.api_key = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'", "API_KEY", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        (f"the answer stopped here:\n{PEM_NO_END}", "PRIVATE_KEY", PEM_NO_END),  # a key cut off still leaks
    ],
)
def test_each_secret_type_is_found(text, entity, value):
    assert entities(text).get(entity) == value
    assert entity in SECRET_ENTITIES


@pytest.mark.parametrize(
    "text",
    [
        "The access key format starts with AKIA followed by sixteen characters.",  # talks about keys, holds none
        "Our repo is github.com/acme/ghp-tools and the branch is gh_pages.",  # gh-ish words
        "Slack channel #xoxb-discussion is archived.",
        "The header is eyJ-something in base64url, see RFC 7519.",
        "-----BEGIN PUBLIC KEY----- is how a public key starts.",
        "Connect to https://db.internal:5432/main with your own account.",  # URL without credentials
        "Ask for a task-force sk-team meeting at 10.",
        "The commit hash is 3f7a9c1e2b4d6f8a0c2e4f6a8b0d2f4a6c8e0a2b.",  # 40 chars, no AWS context
        "Deployed to AWS from commit 3f7a9c1e2b4d6f8a0c2e4f6a8b0d2f4a6c8e0a2b.",  # a hex digest next to AWS words
        "The access key id looks like AKIA plus 16 more characters, e.g. AKIA-XXXX.",
        ('<img alt="logo" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfD'
         'wAChwGA60e6kgAAAABJRU5ErkJggg==">'),  # a base64 image is no JWT
        "payload data:application/json;base64,eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ== ends here",  # one eyJ part
        "Clone https://git@github.com/acme/repo.git or ssh://deploy@ci.internal/acme.git",  # user name, no password
        "Proxy at http://proxy.internal:3128/ and docs at https://example.com/a:b@c",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n-----END CERTIFICATE-----",
        "-----BEGIN PRIVATE KEY----- is the first line of a PKCS#8 key file.",
        "Add the class sk-dropdown-menu-item-active to the element.",  # kebab-case after sk-
    ],
)
def test_benign_look_alikes_are_not_secrets(text):
    found = {f.entity for f in scan_pii(text).findings}
    assert not found & set(SECRET_ENTITIES), found


@pytest.mark.parametrize(
    "text, entity, value",
    [
        (
            "Write to maria.lopez@example.org for the invoice.",
            "EMAIL_ADDRESS",
            "maria.lopez@example.org",
        ),
        (
            "My card 4111 1111 1111 1111 was charged twice.",
            "CREDIT_CARD",
            "4111 1111 1111 1111",
        ),
        (
            "Please block card no 584330513071",
            "CREDIT_CARD",
            "584330513071",
        ),  # fails Luhn, card context
        (
            "Transfer to IBAN DE89370400440532013000 today.",
            "IBAN_CODE",
            "DE89370400440532013000",
        ),
        ("The server at 192.168.10.24 is down.", "IP_ADDRESS", "192.168.10.24"),
        ("His social security number is 536-90-4399.", "US_SSN", "536-90-4399"),
        ("Please ask Mrs. Okafor about it.", "TITLE", "Mrs."),
        ("The patient is 47 years old.", "AGE", "47"),
    ],
)
def test_pii_types_are_found(text, entity, value):
    assert entities(text).get(entity) == value


@pytest.mark.parametrize("text, values", [
    ("Ship it to 742 Evergreen Terrace, apt. 12 please.", ["742 Evergreen Terrace", "apt. 12"]),
    ("My address is Mikkelenborgvej 76, Copenhagen.", ["Mikkelenborgvej 76"]),
])
def test_street_addresses_are_found(text, values):
    found = [text[f.start:f.end] for f in scan_pii(text).findings if f.entity == "ADDRESS"]
    assert found == values


@pytest.mark.parametrize("text", ["Install Windows 10 on the laptop.", "Read Chapter 3 before the exam.",
                                  "Version 2 of the Payments API ships today."])
def test_name_and_number_without_address_words_is_not_an_address(text):
    assert "ADDRESS" not in {f.entity for f in scan_pii(text).findings}


def test_phone_number_is_not_reported_as_uk_nhs():
    found = entities("Call me on 212-555-0199 tomorrow.")
    assert "UK_NHS" not in found and found.get("PHONE_NUMBER") == "212-555-0199"


@pytest.mark.parametrize("text, value", [
    ("Call me at (415) 555-0132 after lunch.", "(415) 555-0132"),
    ("The number is 415.555.0132.", "415.555.0132"),  # North American layout, no phone word needed
    ("My cell is 415-555-0132 x204.", "415-555-0132 x204"),
    ("Dial +1-415-555-0132 ext. 12 for billing.", "+1-415-555-0132 ext. 12"),
    ("From abroad use 001-415-555-0132.", "001-415-555-0132"),
    ("Our London office: +44 20 7946 0958", "+44 20 7946 0958"),
    ("Standard: +33 1 42 68 53 00", "+33 1 42 68 53 00"),  # international, checked by phonenumbers
    ("Zurich switchboard 0041 44 668 18 00", "0041 44 668 18 00"),
    ("Telefon +41 (0)44 668 18 00", "+41 (0)44 668 18 00"),
    ("Mobile: 0612 34 56 78", "0612 34 56 78"),  # national trunk prefix
    ("Fax 030/1234567", "030/1234567"),
    ("You can text me at 8123 4567.", "8123 4567"),  # short: needs the phone word
    ("0650 314 95 44 (mobile)", "0650 314 95 44"),  # label after the number
    ('{"note": "Phone:\\n0612 345 678\\nEmail: none"}', "0612 345 678"),  # escaped line breaks, as in JSON
])
def test_phone_numbers_in_many_layouts_are_found(text, value):
    assert entities(text).get("PHONE_NUMBER") == value


@pytest.mark.parametrize("text", [
    "Released 2024-01-15 at 12:30:45 UTC.",  # ISO date and time
    "The build 2024-01-15T12:30:45Z is live.",
    "The meeting moved to 15.01.2024 at 10.30.",
    "Log line 20240115 103000 ok",  # compact timestamp
    "Upgrade from version 1.2.3.4 to 10.0.19041.1 first.",
    "Your order 415-555-0132 has shipped.",  # a phone layout, but an order number
    "Invoice 2023 0042 117 is due on Friday.",
    "The gateway is 192.168.100.200 again.",
    "Card 4111 1111 1111 1111 was declined.",
    "Amex 3782 822463 10005 expired.",  # 15 digits, Luhn
    "Their SSN is 536-90-4399.",
    "Ship to ZIP 94105-1234.",
    "The grant was 1 250 000 euros.",
    "An excellent 8123 4567 result.",  # "cell" inside a word is no phone word
    "ISBN 978-3-16-148410-0",
    "Pi is 3.14159265358979.",
])
def test_benign_number_look_alikes_are_not_phone_numbers(text):
    assert "PHONE_NUMBER" not in entities(text)


def test_allow_list_keeps_the_users_own_values():
    text = "I am ana@example.com, please email ana@example.com or bo@example.com."
    found = scan_pii(text, allow=["ana@example.com"]).findings
    assert [text[f.start : f.end] for f in found if f.entity == "EMAIL_ADDRESS"] == [
        "bo@example.com"
    ]


@pytest.mark.parametrize(
    "mode, check",
    [
        ("replace", lambda out: "<EMAIL_ADDRESS>" in out and "<GITHUB_TOKEN>" in out),
        ("redact", lambda out: "@" not in out and "ghp_" not in out),
        ("mask", lambda out: "*" * 10 in out and "ghp_" not in out),
        (
            "hash",
            lambda out: (
                "ghp_" not in out and "lee@example.com" not in out and len(out) > 100
            ),
        ),
    ],
)
def test_anonymize_modes(mode, check):
    text = f"Send it to lee@example.com with {GH}."
    out = anonymize(text, scan_pii(text).findings, mode)
    assert "lee@example.com" not in out and GH not in out
    assert check(out), out


@pytest.mark.parametrize("text", ["", "   \n\t  ", "\u200b\u200c\u200d\ufeff" * 100, "\u200b" * 300_000, "*** --- ..."])
def test_text_without_letters_or_digits_has_no_findings(text):
    res = scan_pii(text)
    assert res.findings == [] and res.truncated == (len(text) > pii.MAX_CHARS)


def test_zero_width_characters_around_pii_do_not_hide_it():
    text = "\u200b\u200b write to ana@example.com \u200d"
    assert entities(text) == {"EMAIL_ADDRESS": "ana@example.com"}


def test_ten_megabytes_is_truncated_and_says_so():
    head = "Mail late@example.com about it. "
    big = head + "filler words " * 800_000 + f" and the token {GH}"  # over 10 MB
    res = scan_pii(big, max_chars=12_000)  # more than one window
    assert res.truncated and res.scanned_chars == 12_000
    assert [(f.entity, big[f.start:f.end]) for f in res.findings] == [("EMAIL_ADDRESS", "late@example.com")]
    assert not scan_pii("short text").truncated


def test_windows_find_everything_once_with_offsets_into_the_text(monkeypatch):
    pieces = [f"Mail user{i}@example.org or call (415) 555-01{i:02d} today, token {GH}." for i in range(12)]
    text = "\n".join(pieces) + "\n" + PEM + "\n"
    types = ["EMAIL_ADDRESS", "PHONE_NUMBER", "GITHUB_TOKEN", "PRIVATE_KEY"]
    whole = [(f.entity, f.start, f.end) for f in scan_pii(text, entities=types).findings]
    monkeypatch.setattr(pii, "WINDOW_CHARS", 300)
    monkeypatch.setattr(pii, "WINDOW_OVERLAP", 140)  # longer than any finding here
    windowed = [(f.entity, f.start, f.end) for f in scan_pii(text, entities=types).findings]
    assert windowed == whole and len(whole) == 3 * 12 + 1
    assert {text[s:e] for kind, s, e in whole if kind == "GITHUB_TOKEN"} == {GH}


def test_a_key_longer_than_the_window_overlap_is_still_found(monkeypatch):
    body = "\n".join("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Vj1q2Lm8Zx9Yw3Kp4Rt" for _ in range(30))
    key = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    text = "Some notes before the key.\n" * 10 + key + "\nand after."
    monkeypatch.setattr(pii, "WINDOW_CHARS", 1_000)
    monkeypatch.setattr(pii, "WINDOW_OVERLAP", 300)
    found = [f for f in scan_pii(text).findings if f.entity == "PRIVATE_KEY"]
    assert found and found[0].start == text.index("-----BEGIN")


@pytest.mark.parametrize("data, message", [(b"mail ana@example.com \xff\xfe", "decode first"),
                                           (bytearray(b"plain ascii"), "decode first"), (None, "not NoneType")])
def test_non_text_is_refused_and_bytes_get_a_hint_to_decode(data, message):
    with pytest.raises(TypeError, match=message):
        scan_pii(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("errors", ["replace", "surrogateescape"])
def test_text_decoded_from_non_utf8_bytes_is_scanned(errors):
    text = b"\xff\xfe mail ana@example.com \xc3\x28 now".decode("utf-8", errors=errors)
    assert entities(text) == {"EMAIL_ADDRESS": "ana@example.com"}


@pytest.mark.parametrize("opening, closing", [("> ", ""), ("- ", ""), ("[", "]"), ("*", "*")],
                         ids=["block quotes", "list levels", "links", "emphasis"])
def test_deeply_nested_markdown_is_scanned(opening, closing):
    text = opening * 5000 + " write to deep@example.org " + closing * 5000
    found = scan_pii(text).findings
    assert [(f.entity, text[f.start:f.end]) for f in found] == [("EMAIL_ADDRESS", "deep@example.org")]


@pytest.mark.parametrize("address", ["priya.raman@vendor-support.example", "ops@corp.internal", "a.b+tag@mail.newgtld"])
def test_email_with_a_reserved_or_unlisted_tld_is_found(address):
    text = f"Escalate to {address} during an incident."
    assert entities(text).get("EMAIL_ADDRESS") == address


@pytest.mark.parametrize("text", ["pin package@1.2.3 in the lockfile", "install @scope/pkg first", "see a@b.c"])
def test_email_look_alikes_are_not_emails(text):
    assert "EMAIL_ADDRESS" not in entities(text)
