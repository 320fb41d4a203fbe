"""Secrets ``engine.redact.redact`` masks beyond the ones of test_redact_shapes.py: a
secret key's value inside JSON text whose quotes are escaped (a state file's
``"task": "api_key=\\"...\\""``), masked so that the JSON stays valid."""

from __future__ import annotations

import json

from engine.redact import redact


def test_an_escaped_quoted_value_in_json_text_is_masked_and_the_json_stays_valid() -> None:
    text = json.dumps({"task": 'q="hello" api_key="KEYVAL_x123" acct="***"'})
    masked = redact(text)
    assert json.loads(masked) == {"task": 'q="hello" api_key="***" acct="***"'}
    assert json.loads(redact(json.dumps({"t": 'password=abc"'}))) == {"t": 'password=***"'}
