"""Secrets ``engine.redact.redact`` masks beyond the ones of test_redact_shapes.py: a
secret key's value inside JSON text whose quotes are escaped (a state file's
``"task": "api_key=\\"...\\""``), masked so that the JSON stays valid; ``NAME=`` of an
environment (``PGPASSWORD=``), a command line's secret options, JSON Web Tokens and PEM
private keys."""

from __future__ import annotations

import json

import pytest

from engine.redact import redact


def test_an_escaped_quoted_value_in_json_text_is_masked_and_the_json_stays_valid() -> None:
    text = json.dumps({"task": 'q="hello" api_key="KEYVAL_x123" acct="***"'})
    masked = redact(text)
    assert json.loads(masked) == {"task": 'q="hello" api_key="***" acct="***"'}
    assert json.loads(redact(json.dumps({"t": 'password=abc"'}))) == {"t": 'password=***"'}


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234secretbody\nabcd==\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "connected with PGPASSWORD=pgpw_Secret123; task: x",
            "connected with PGPASSWORD=***; task: x",
        ),
        ("MYTOKEN=abcdef12 x", "MYTOKEN=*** x"),
        ("psql --password hunter2x --host h", "psql --password *** --host h"),
        (
            "tool --token abc123def --api-key k-99887766 --secret s3cr3tval --passwd pw12345",
            "tool --token *** --api-key *** --secret *** --passwd ***",
        ),
        ("tool --api-key=k-99887766 --token=abc123def", "tool --api-key=*** --token=***"),
        (f"auth {JWT} end", "auth *** end"),
        (
            f"key:\n{PEM}\nafter",
            "key:\n-----BEGIN RSA PRIVATE KEY-----\n***\n-----END RSA PRIVATE KEY-----\nafter",
        ),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBcut", "-----BEGIN PRIVATE KEY-----\n***\n"),
    ],
    ids=["PGPASSWORD=", "NAMETOKEN=", "--password", "options", "option=", "jwt", "pem", "cut-pem"],
)
def test_env_names_options_jwts_and_private_keys_are_masked(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=4096 maxtokens",
        "passthrough=yes compass=1 bypass=2",
        "--token-file /x --token -",
        "--password VALUE",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "eyJ alone. eyJx.eyJy.z",
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_private_key_in_json_text_stays_json() -> None:
    assert json.loads(redact(json.dumps({"k": PEM}))) == {
        "k": "-----BEGIN RSA PRIVATE KEY-----\n***\n-----END RSA PRIVATE KEY-----"
    }
