"""Which workflow input names say their value is a secret (``password``, ``api_key``...).

Apart from ``engine.redact`` so that loading a template (``workflow validate``) imports
no more than ``re``. docs/workflows.md, "Inputs"::

    secret_name("GITHUB_TOKEN")  # True
    secret_name("author")        # False
"""

from __future__ import annotations

import re

#: Input names that say their value is a secret, as name parts (lower case; a name is
#: cut at ``_``, ``-``, digits and camelCase humps): after Airflow's "sensitive field
#: names" (``password``, ``secret``, ``token``, ``api_key``...), in workflow templates.
SECRET_NAME_PARTS = frozenset(
    {
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
        "auth",
        "authorization",
    }
)
#: Pairs of consecutive name parts that say so too (``api_key``, ``apiKey``, ``ACCESS_KEY``).
SECRET_NAME_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key")})
_NAME_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")


def secret_name(name: str) -> bool:
    """Whether ``name`` (a workflow input's name) says its value is a secret: one of its
    parts is in ``SECRET_NAME_PARTS`` or two consecutive parts are in ``SECRET_NAME_PAIRS``,
    case-insensitive. Parts, not substrings: ``db_password``, ``apiKey``, ``GITHUB_TOKEN``,
    ``basic_auth`` are secret names; ``author``, ``tokenizer``, ``secretary`` are not
    (docs/workflows.md, "Inputs")."""
    parts = [p.lower() for p in _NAME_PART.findall(name)]
    return any(p in SECRET_NAME_PARTS for p in parts) or any(
        pair in SECRET_NAME_PAIRS for pair in zip(parts, parts[1:], strict=False)
    )
