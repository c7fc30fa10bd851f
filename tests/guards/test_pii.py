"""PII and secrets: Presidio with the registry spaCy model and our recognizers. Fixtures are our own text."""

from __future__ import annotations

import pytest

from guards.pii import SECRET_ENTITIES, anonymize, scan_pii

GH = "ghp_" + "Zx9" * 12
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq2l0n0tAbCdEfGh\nq2l0n0tAbCdEfGhIjK==\n-----END RSA PRIVATE KEY-----"


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


def test_bad_input_is_bounded_and_says_what_was_scanned():
    assert scan_pii("").findings == []
    assert scan_pii("\u200b\u200c\u200d" * 100).findings == []
    big = ("filler words " * 10_000) + " mail me at late@example.com"
    res = scan_pii(big, max_chars=50_000)
    assert res.truncated and res.scanned_chars == 50_000 and res.findings == []
    assert not scan_pii("short text").truncated
    with pytest.raises(TypeError):
        scan_pii(b"bytes")  # type: ignore[arg-type]
