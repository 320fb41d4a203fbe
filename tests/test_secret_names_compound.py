"""The secret-name rule (``engine.secretnames.secret_name``) on names that write a secret
word inside one part (``dbpassword``, ``PGPASSWORD``, ``accesstoken``) and on
well-known environment names (``MYSQL_PWD``, ``DB_PASS``), and on the ordinary words
that merely contain one (``tokenizer``, ``compass``, ``monkey``): docs/workflows.md,
"Inputs"."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.secretnames import secret_name

SECRET = (
    "PGPASSWORD",
    "MYSQL_PWD",
    "dbpassword",
    "accesstoken",
    "apitoken",
    "authtoken",
    "clientsecret",
    "privatekey",
    "DB_PASS",
    "smtpPass",
    "SECRETKEY",
    "mysecrets",
)
PLAIN = (
    "author",
    "tokenizer",
    "max_tokens",
    "passthrough",
    "compass",
    "bypass",
    "keyboard",
    "monkey",
    "PWD",
    "OLDPWD",
    "pass_count",
    "oauth",
    "secretary",
)


@pytest.mark.parametrize("name", SECRET)
def test_a_secret_word_inside_a_part_or_a_known_env_name_is_a_secret(name: str) -> None:
    assert secret_name(name) is True


@pytest.mark.parametrize("name", PLAIN)
def test_words_that_only_contain_one_are_not(name: str) -> None:
    assert secret_name(name) is False


def test_the_docs_name_these_examples() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "workflows.md").read_text()
    for name in ("PGPASSWORD", "MYSQL_PWD", "DB_PASS", "accesstoken", "clientsecret"):
        assert secret_name(name) and f"`{name}`" in doc
    for name in ("passthrough", "compass", "bypass", "monkey"):
        assert not secret_name(name) and f"`{name}`" in doc
