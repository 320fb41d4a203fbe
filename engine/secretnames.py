"""Which workflow input names say their value is a secret (``password``, ``api_key``...).

Apart from ``engine.redact`` so that loading a template (``workflow validate``) imports
no more than ``re``. docs/workflows.md, "Inputs"::

    secret_name("GITHUB_TOKEN")  # True
    secret_name("author")        # False
"""

from __future__ import annotations

import re

#: Secret words that say so both as a whole name part and as a part's ending: the
#: common core of ``SECRET_NAME_PARTS`` and ``SECRET_NAME_ENDINGS``.
_SECRET_WORDS = (
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "apikey",
    "credential",
    "credentials",
)
#: Input names that say their value is a secret, as name parts (lower case; a name is
#: cut at ``_``, ``-``, digits and camelCase humps): after Airflow's "sensitive field
#: names" (``password``, ``secret``, ``token``, ``api_key``...), in workflow templates.
SECRET_NAME_PARTS = frozenset({*_SECRET_WORDS, "auth", "authorization"})
#: Pairs of consecutive name parts that say so too (``api_key``, ``apiKey``, ``ACCESS_KEY``).
SECRET_NAME_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key")})
#: Secret words a name part may end with after other letters (``dbpassword``,
#: ``PGPASSWORD``, ``accesstoken``, ``authtoken``, ``clientsecret``, ``privatekey``):
#: names written without separators. Not ``auth`` (``oauth`` is a mode), nor ``key`` or
#: ``pass`` alone (``monkey``, ``compass``, ``bypass``).
SECRET_NAME_ENDINGS = (*_SECRET_WORDS, "accesskey", "privatekey", "secretkey")
#: Last name parts that say so after another part, as well-known environment names
#: write them: ``DB_PASS``, ``SMTP_PASS``, ``MYSQL_PWD`` (not ``PWD`` alone: the shell's
#: working directory).
SECRET_LAST_PARTS = frozenset({"pass", "pwd"})
_NAME_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")


def secret_name(name: str) -> bool:
    """Whether ``name`` (a workflow input's name, an environment variable's) says its
    value is a secret, case-insensitive: one of its parts is in ``SECRET_NAME_PARTS`` or
    ends with one of ``SECRET_NAME_ENDINGS``, two consecutive parts are in
    ``SECRET_NAME_PAIRS``, or its last part, after another, is in ``SECRET_LAST_PARTS``.
    Words, not substrings: ``db_password``, ``PGPASSWORD``, ``apiKey``, ``GITHUB_TOKEN``,
    ``accesstoken``, ``basic_auth``, ``DB_PASS``, ``MYSQL_PWD`` are secret names;
    ``author``, ``tokenizer``, ``secretary``, ``max_tokens``, ``bypass``, ``monkey``, ``PWD``
    are not (docs/workflows.md, "Inputs")."""
    parts = [p.lower() for p in _NAME_PART.findall(name)]
    return (
        any(p in SECRET_NAME_PARTS or p.endswith(SECRET_NAME_ENDINGS) for p in parts)
        or any(pair in SECRET_NAME_PAIRS for pair in zip(parts, parts[1:], strict=False))
        or (len(parts) > 1 and parts[-1] in SECRET_LAST_PARTS)
    )
