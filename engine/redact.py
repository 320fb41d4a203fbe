"""Redaction: no secret the engine knows ever leaves it in text.

Every secret this process reads (hooks tokens, the embedded gateway's token, model API
keys, Discord bot tokens, passwords in configured URLs) is registered here with
``register(value)``. Every boundary where text leaves the engine (the console, records,
journals, summaries, logs, error messages) passes it through ``redact(text)`` or
``redact_obj(obj)``, which replace

* each registered value (and its JSON-escaped form) with ``***``, and
* generic shapes even when the value is unknown: ``Bearer <token>``, the value of an
  ``Authorization``, ``x-openclaw-token`` or ``x-api-key`` header or of a key that names
  a secret (``password=``, ``token:``, ``"secret": "..."``, ``DB_PASSWORD=``: ``_SECRET_KEY``;
  not a flag, ``secret: true``, nor a placeholder, ``api_key=VALUE``), keys in their
  issuer's published shape (``sk-...``, ``ghp_...``, ``AKIA...``, ``xoxb-...``:
  ``_SHAPED``), a URL query parameter that names a secret (``?token=...``, ``&sig=...``),
  and the user info of a URL with a password (``https://user:pass@host`` ->
  ``https://***@host``) or with a bare user that looks like a token
  (``https://ghp_x1y2@host``, ``git+ssh://tok3n@host``: a digit or another symbol in it,
  or 24 characters and more). A bare user name that reads as a name (letters, ``.``,
  ``_``, ``-``; under 24 characters) is shown as it is: ``ssh://git@github.com/acme``,
  ``https://deploy@host``; so is any bare user of a PostgreSQL URL
  (``postgresql://orch2@db/orch``: a role name, which PostgreSQL's own messages show).
  Secrets registered by value are masked in any case.

Example::

    register(os.environ["ATOMIZER_HOOKS_TOKEN"])
    redact("403 forbidden: Bearer " + os.environ["ATOMIZER_HOOKS_TOKEN"])
    # '403 forbidden: Bearer ***'

A secret known to one run only (a delegation's handoff key) is not registered: the code
that writes that run's text passes it per call, ``redact(text, also=(key,))``, so a
long-running process keeps no registry that grows with every delegation.

The known values are matched by one compiled alternation, rebuilt only when the set
changes, and run only when a plain substring test finds one of them; each generic scan
runs only when the text holds one of its trigger words (or, for the issuers' shapes, one
of their prefixes), both looked for in one Aho-Corasick pass each (``_gates``). A 1.2 KB
record without secrets costs about 6 microseconds.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import ahocorasick

if TYPE_CHECKING:
    from pathlib import Path

    from engine.runner import SecretInputsMissing
    from engine.store.protocol import RunStore

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not registered: masking them would shred ordinary text.
MIN_SECRET = 4

_lock = threading.Lock()
_known: set[str] = set()
#: Secrets held for a while (a workflow run's secret inputs), with how many holders each.
_held: dict[str, int] = {}
_known_re: re.Pattern[str] | None = None
_known_list: tuple[str, ...] = ()

_TOKEN = r"[A-Za-z0-9._~+/=:-]"
#: A key whose value is a secret in ``key=value``, ``key: value``, JSON and dict reprs: a
#: name that ends in one of these words after ``_``, ``-`` or a non-word character
#: (``password``, ``DB_PASSWORD``, ``client_secret``, ``GITHUB_TOKEN``,
#: ``aws_secret_access_key``), or an auth header. Not ``pwd``: ``PWD=/home/x`` is the
#: shell's working directory in every environment dump.
_SECRET_KEY = (
    r"(?:proxy-)?authorization|x-openclaw-token|x-api-key"
    r"|password|passwd|passphrase|token|(?:api|access|private|secret)[-_]?key|secret"
)
#: A URL query parameter whose value is a secret (``?token=``, ``&X-Amz-Signature=``).
_SECRET_PARAM = (
    r"(?:[a-z0-9]{1,30}[_.-]){0,4}"
    r"(?:token|key|apikey|sig|signature|password|passwd|secret|auth|credentials?)"
)
# The shapes scanned for when a trigger word is in the text; each branch keeps its
# prefix (shown) apart from the value (masked).
_GENERIC = re.compile(
    r"(?i)"
    # where a branch can begin, checked first at each position: a scan ~5x faster than
    # trying every branch everywhere (each branch below starts with one of these)
    r"(?=[?&;\-apstxb])(?=[?&;\-]|pass|token|secret|auth|proxy-|x-|api|access|private|bearer)"
    r"(?:"
    # a secret query parameter in a URL (`?token=x&page=2`: the value up to `&`)
    rf"(?P<q>[?&;]{_SECRET_PARAM}=)(?P<qval>[^&;#\s\"'<>`]+)"
    # a secret key's or an auth header's value (also in a dict repr or JSON:
    # `"authorization": "Bearer x"`, `"password": "x y"`, `password=x`, `token: x`)
    # (after a name's letters when `=` follows at once: `PGPASSWORD=x`, `MYTOKEN=x`)
    rf"|(?:(?<![a-z0-9])|(?<=[a-z0-9])(?=(?:password|passwd|token|secret)=))(?P<h>{_SECRET_KEY})"
    # (a quote may be escaped, `api_key=\"x\"` in JSON text: the escape is kept)
    r"(?P<hsep>\\?[\"']?\s{0,3}[:=]\s{0,3}(?:\\?[\"'])?\s{0,3})"
    r"(?P<hscheme>(?:bearer|bot|basic|token)\s+)?"
    r"(?P<hval>(?<=\")[^\"\\\n]+|(?<=')[^'\\\n]+|(?:[^\s\"',;}\]`\\]|\\(?![\"']))+)"
    # a command line's secret option's value (`--password x`; `--token=x` is a key above)
    r"|(?P<f>(?<![\w-])--(?:password|passwd|token|secret|api-key)\s+)(?P<fval>[^\s\"'`-][^\s\"'`]*)"
    # a bearer token anywhere; it must look like one (a digit or symbol in it, or long)
    rf"|(?P<b>\bbearer\s+)(?P<bval>(?={_TOKEN}*[0-9._~+/=-]){_TOKEN}{{6,}}|[A-Za-z]{{24,}})"
    r")"
)
#: The characters ``\s`` matches in a ``str`` pattern (``str.isspace``; checked in
#: tests/test_redact_gates.py).
_SPACES = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: Substrings (lower case) without which ``_GENERIC`` cannot match. ``token`` counts only
#: with what follows it in every branch that can match it (a key's separator: a quote, its
#: escape, ``:``, ``=``; white space: ``--token x``), so that a name like
#: ``token_wait_ms`` in every step's result does not start the scan.
_TRIGGERS = (  # what the branches can match (not "pass", "auth", "sig": passed, author)
    *("token" + c for c in "\\\"':=" + _SPACES),
    "passw", "passp", "secret", "authorization", "auth=", "bearer", "sig=", "signature=",
    "credential", "key=",
    "api_key", "api-key", "apikey", "access_key", "accesskey", "private_key", "privatekey",
)  # fmt: skip
#: Substrings without which ``_SHAPED`` cannot match (its gate's regex scan is dearer).
_SHAPED_HINTS = (
    "sk-", "ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "glpat-", "_live_",
    "_test_", "xox", "AKIA", "ASIA", "AIza", "npm_", "hf_",
)  # fmt: skip
#: ``_gates``' automaton: each trigger (value False) and each hint in lower case (True).
_GATE_AC = ahocorasick.Automaton()
for _word in _TRIGGERS:
    _GATE_AC.add_word(_word, False)
for _word in _SHAPED_HINTS:
    _GATE_AC.add_word(_word.lower(), True)
_GATE_AC.make_automaton()
#: Keys issued in published shapes (case-sensitive, their documented lengths):
#: OpenAI/Anthropic/OpenRouter ``sk-``; GitHub ``ghp_``/``gho_``/``ghs_``/``ghu_``/``ghr_``
#: + 36 and ``github_pat_``; GitLab ``glpat-`` + 20; Stripe ``sk_live_``/``rk_live_``/
#: ``_test_`` + 24; Slack ``xoxb-``/``xoxa-``/``xoxp-``/``xoxr-``/``xoxs-``; AWS access key
#: ids ``AKIA``/``ASIA`` + 16; Google API keys ``AIza`` + 35; npm ``npm_`` + 36; Hugging
#: Face ``hf_`` + 34. The issuer's prefix is shown (``ghp_***``).
_SHAPED = re.compile(
    r"\b(?P<p>sk-|gh[opsur]_|github_pat_|glpat-|[rs]k_(?:live|test)_|xox[abprs]-"
    r"|AKIA|ASIA|AIza|npm_|hf_)"
    r"(?P<v>(?<=sk-)[A-Za-z0-9_-]{16,}"
    r"|(?<=_)(?<=gh._)[A-Za-z0-9]{36,251}"
    r"|(?<=github_pat_)[A-Za-z0-9_]{22,244}"
    r"|(?<=glpat-)[A-Za-z0-9_-]{20,}"
    r"|(?<=live_|test_)[A-Za-z0-9]{24,}"
    r"|(?<=-)(?<=xox.-)[A-Za-z0-9-]{10,}"
    r"|(?<=A)(?<=AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"
    r"|(?<=AIza)[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"
    r"|(?<=npm_)[A-Za-z0-9]{36}(?![A-Za-z0-9])"
    r"|(?<=hf_)[A-Za-z0-9]{34}(?![A-Za-z0-9]))"
)
#: Finds, in one fast scan (a character class first), where a ``_SHAPED`` key may start.
_SHAPED_GATE = re.compile(
    r"[-_A](?:(?<=sk-)|(?<=gh[opsur]_)|(?<=_pat_)|(?<=glpat-)|(?<=_live_)|(?<=_test_)"
    r"|(?<=xox[abprs]-)|(?<=npm_)|(?<=hf_)|(?<=A)(?:KIA|SIA|Iza))"
)
#: A JSON Web Token (RFC 7519, compact form): three base64url parts, the header's and the
#: payload's JSON objects (``{"``) encoded, so they begin ``eyJ``.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
#: A PEM private key (RFC 7468): the body between its BEGIN and END lines is masked (to
#: the text's end when the END line is missing).
_PEM = re.compile(
    r"(?P<pb>-----BEGIN (?P<kind>[A-Z0-9 ]{0,40})PRIVATE KEY-----)(?P<pv>.*?)"
    r"(?P<pe>-----END (?P=kind)PRIVATE KEY-----|\Z)",
    re.S,
)
#: User info in a URL.
_URL_USER = re.compile(r"(?i)(?P<u>\b[a-z][a-z0-9+.-]{1,20}://)(?P<uval>[^\s/@\"'<>]+)@")
#: Every scan, for ``secret_parts``.
_SCANS = (_GENERIC, _SHAPED, _URL_USER, _JWT, _PEM)


#: URL schemes whose bare user name (no password) is a database role, shown as it is.
_ROLE_SCHEMES = ("postgresql://", "postgres://")
#: A bare URL user that reads as a name, not a token (``git``, ``deploy-bot``, ``j.doe``).
_PLAIN_USER = re.compile(r"[A-Za-z][A-Za-z._-]{0,22}")


def register(value: str | None) -> None:
    """Remember ``value`` as a secret of this process; empty and very short values are ignored."""
    if not value:
        return
    value = value.strip()
    if len(value) < MIN_SECRET or value in _known:
        return
    forms = {value, json.dumps(value)[1:-1]}
    with _lock:
        if forms <= _known:
            return
        _known.update(forms)
        _rebuild()


def register_url(url: str | None) -> None:
    """Register the password (or the token-like bare user, as ``redact`` tells them) in
    ``url``'s user info, and the values of its query parameters with secret names
    (``?token=...``, ``&sig=...``: ``_SECRET_PARAM``), if any."""
    if not url:
        return
    if "=" in url:
        for m in _GENERIC.finditer(url):
            if m.group("q") is not None and _generic(m) != m.group(0):
                register(unquote(m.group("qval")))
                register(m.group("qval"))
    if "@" not in url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if not password and _PLAIN_USER.fullmatch(user):
        return  # a user name without a password (``ssh://git@host``): not a secret
    if password:
        register(password)
    elif user:
        register(user)
    if user or password:
        # HTTP clients send URL credentials as Basic auth: a server may echo that form.
        register(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))


def register_config(cfg: Any) -> int:
    """Register every secret an ``engine.config.Config`` names, as far as it can be read
    now; return how many values were registered (an unset variable or a missing file is
    skipped: nothing to mask).

    Called for every config ``engine.config.load_config`` loaded (before the first
    mask), so every program that loads a config masks all of them, whether or not this
    command uses them (an agent's output may quote
    another agent's key, which the agent inherited in its environment). The sources:

    * each registry agent's and the local gateway's ``token_env`` / ``token_file``, and
      the token an embedded gateway's companion made (``<handoffs_dir>/.serve/gateway.token``);
    * each gateway agent's ``api_key_env`` (model agents);
    * ``channels.token_env`` (the Discord bot token);
    * ``store:``: a password in the URL, and the variable its ``password_env`` names;
    * each registry agent's ``url``: a password in it, and the values of its query
      parameters with secret names (``?token=...``: ``register_url``);
    * each gateway agent's ``env`` values under names that say they hold a secret
      (``DB_PASSWORD``, ``MY_TOKEN``: ``engine.secretnames.secret_name``);
    * ``serve.tokens_env`` / ``serve.tokens_file`` (the ``NAME:ROLE:TOKEN`` entries'
      tokens) and ``$ORCH_POOL_TOKEN`` (``orchestrate pool serve``'s default).
    """
    import os

    envs, files, listed = _secret_sources(cfg)
    values = [os.environ.get(env, "") for env in envs]
    values += _env_secrets(cfg)
    for file in files:
        try:
            if file.is_file() and file.stat().st_size <= 65536:
                values.append(file.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            pass
    values += listed  # the server's tokens, each on its own
    found = 0
    for value in values:
        if value.strip() and len(value.strip()) >= MIN_SECRET:
            register(value.strip())
            found += 1
    return found


def _secret_sources(cfg: Any) -> tuple[list[str], list[Any], list[str]]:
    """``register_config``'s sources: variable names, files, and ``NAME:ROLE:TOKEN``
    lists (``serve.tokens_env``'s value)."""
    from pathlib import Path

    envs: list[str] = ["ORCH_POOL_TOKEN"]
    files: list[Path] = []
    for a in getattr(cfg, "agents", {}).values():
        register_url(getattr(a, "url", None))
        envs += [a.token_env] if getattr(a, "token_env", None) else []
        files += [Path(a.token_file)] if getattr(a, "token_file", None) else []
    gw = getattr(cfg, "gateway", None)
    if gw is not None:
        envs += [gw.token_env] if gw.token_env else []
        files += [Path(gw.token_file)] if gw.token_file else []
        files.append(Path(cfg.handoffs_dir) / ".serve" / "gateway.token")
        envs += [s.api_key_env for s in gw.agents.values() if getattr(s, "api_key_env", None)]
    listed = _service_sources(cfg, envs, files)
    return [e for e in envs if isinstance(e, str)], files, listed


def _env_secrets(cfg: Any) -> list[str]:
    """The values of the gateway agents' ``env`` under names that say they hold a secret
    (``engine.secretnames.secret_name``: ``DB_PASSWORD``, ``MY_TOKEN``, ``API_KEY``)."""
    from engine.secretnames import secret_name

    gw = getattr(cfg, "gateway", None)
    return [
        value
        for spec in (gw.agents.values() if gw is not None else ())
        for name, value in (getattr(spec, "env", None) or {}).items()
        if isinstance(value, str) and secret_name(str(name))
    ]


def _service_sources(cfg: Any, envs: list[str], files: list[Any]) -> list[str]:
    """The Discord bot token's, the store's and ``orchestrate serve``'s sources, added to
    ``envs`` and ``files``; returns the token lists read from ``serve.tokens_env``."""
    import os
    from pathlib import Path

    channels = getattr(cfg, "channels", None) or {}
    if isinstance(channels.get("token_env"), str):
        envs.append(channels["token_env"])
    store = getattr(cfg, "store", None)
    if isinstance(store, str):
        register_url(store)
        m = re.search(r"[?&]password_env=([A-Za-z_][A-Za-z0-9_]*)", store)
        envs += [m.group(1)] if m else []
    serve = getattr(cfg, "serve", None) or {}
    if not isinstance(serve.get("tokens_env"), str) and not isinstance(
        serve.get("tokens_file"), str
    ):
        return []
    # each token itself is the secret (``NAME:ROLE:TOKEN`` entries, whose token may hold
    # a colon; a YAML list of ``{name, role, token}``), not the variable's or file's text;
    # a token the server would refuse as too short is masked all the same
    listed: list[str] = []
    if isinstance(serve.get("tokens_env"), str):
        text = os.environ.get(serve["tokens_env"], "")
        entries = (e.split(":", 2) for e in re.split(r"[\s,]+", text) if e)
        listed += [parts[2] for parts in entries if len(parts) == 3]
    if isinstance(serve.get("tokens_file"), str):
        base = Path(cfg.path).parent if getattr(cfg, "path", None) else Path.cwd()
        listed += _file_tokens(base / Path(serve["tokens_file"]).expanduser())
    return listed


def _file_tokens(path: Path) -> list[str]:
    """The ``token`` of each entry of a ``serve.tokens_file`` (a list, or ``tokens:``);
    nothing when it cannot be read (the server says why when it starts)."""
    from engine.errors import ConfigError
    from engine.yamlio import read_yaml

    try:
        data = read_yaml(path, error=ConfigError, what="`serve.tokens_file`")[0]
    except (ConfigError, OSError):
        return []
    data = data.get("tokens") if isinstance(data, dict) else data
    items = data if isinstance(data, list) else []
    return [i["token"] for i in items if isinstance(i, dict) and isinstance(i.get("token"), str)]


def _forms(values: Iterable[str]) -> set[str]:
    forms: set[str] = set()
    for value in values:
        value = value.strip()
        if len(value) >= MIN_SECRET:
            forms |= {value, json.dumps(value)[1:-1]}
    return forms


@contextmanager
def held(values: Iterable[str]) -> Iterator[None]:
    """Mask ``values`` (and their JSON-escaped forms) everywhere, as registered secrets
    are, while the ``with`` block runs; then forget them unless another holder still
    holds them (a count per value). A workflow run holds its secret inputs so for its
    lifetime (``engine.runner``): a long-running process keeps no registry that grows
    with every run. Values shorter than ``MIN_SECRET`` are ignored."""
    forms = _forms(values)
    if not forms:
        yield
        return
    with _lock:
        for f in forms:
            _held[f] = _held.get(f, 0) + 1
        _rebuild()
    try:
        yield
    finally:
        with _lock:
            for f in forms:
                n = _held.get(f, 0) - 1
                if n > 0:
                    _held[f] = n
                else:
                    _held.pop(f, None)
            _rebuild()


def held_count() -> int:
    """How many secret forms are held (``held``) right now."""
    with _lock:
        return len(_held)


def secret_parts(obj: Any) -> list[str]:
    """The substrings of every string in ``obj`` (a JSON-like value) that ``redact``
    would mask by their shape (a ``Bearer`` token, an ``api_key=`` value, an ``sk-``
    key, a URL's password or token-like user): the secret parts alone, so that they are
    masked when they appear bare (``held``). Registered secrets are masked already and
    are not listed."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in (*secret_parts(k), *secret_parts(v))]
    if isinstance(obj, list | tuple):
        return [p for v in obj for p in secret_parts(v)]
    if not isinstance(obj, str):
        return []
    parts: list[str] = []
    for m in (m for scan in _SCANS for m in scan.finditer(obj)):
        whole, shown = m.group(0), _generic(m)
        if shown == whole:
            continue
        start = 0
        while start < min(len(whole), len(shown)) and whole[start] == shown[start]:
            start += 1
        end = 0
        while end < min(len(whole), len(shown)) - start and whole[-1 - end] == shown[-1 - end]:
            end += 1
        secret = whole[start : len(whole) - end]
        parts.append(secret)
        if m.re is _URL_USER and ":" in m.group("uval"):
            parts.append(m.group("uval").split(":", 1)[1])  # the password alone
    return parts


def secret_input_names(inputs: Mapping[str, Any], declared: Collection[str] = ()) -> list[str]:
    """The names of the workflow inputs that hold a secret, in ``inputs``' order: the
    one rule for a run's ``run.json`` (kept masked, with a keyed hash in
    ``secret_inputs``), what it holds masked while it runs, what a resume asks for again
    (``workflow resume RUN -i NAME=VALUE``) and what a server keeps in memory.

    ``inputs``: ``{name: value}`` as the run got them; ``declared``: the names whose
    whole value is a secret (``secret: true``, or a name that says so:
    ``engine.secretnames.secret_name``;
    ``WorkflowSpec.secret_inputs``). An input holds a secret when it is declared so and
    its value is not empty, or when ``redact`` masks something in its value (a
    registered secret, ``Bearer ...``, ``api_key=...``, an ``sk-`` key, a URL password),
    declared or not."""
    return [
        name
        for name, value in inputs.items()
        if (name in declared and value not in ("", None)) or redact_obj(value) != value
    ]


def masked_inputs(inputs: Mapping[str, Any], declared: Collection[str] = ()) -> dict[str, Any]:
    """``inputs`` as a run's ``run.json`` keeps them: a declared secret (see
    ``secret_input_names``) as ``***`` whole, every other value through ``redact_obj``."""
    return {
        name: MASK if name in declared and value not in ("", None) else redact_obj(value)
        for name, value in inputs.items()
    }


def input_secrets(inputs: Mapping[str, Any], declared: Collection[str] = ()) -> list[str]:
    """What a run holds masked while it runs (``held``): the whole value of each declared
    secret input (see ``secret_input_names``; values shorter than ``MIN_SECRET`` are
    ignored there), and the secret parts (``secret_parts``) of every value."""
    whole = [str(v) for n, v in inputs.items() if n in declared and v not in ("", None)]
    return [*whole, *secret_parts(list(inputs.values()))]


def end_missing_secrets(store: RunStore, run_id: str, exc: SecretInputsMissing) -> None:
    """End ``run_id`` ``failed`` now because its secret inputs are not held here (this
    process restarted, or the run was started elsewhere): under the run's claim, a
    ``run_finished`` event whose ``reason`` is ``exc``'s paragraph (``workflow resume RUN
    -i NAME=VALUE`` continues it) and ``inputs_missing`` its ``names``; then its summary
    again. What the Discord inbox and ``orchestrate serve`` do with such a run."""
    from engine.runs import replay_run, summarize
    from engine.states import RunState

    with store.claim(run_id):
        journal = store.journal(run_id)
        try:
            journal.append(
                "run_finished",
                status=RunState.FAILED.value,
                reason=str(exc),
                inputs_missing=list(exc.names),
            )
        finally:
            journal.close()
        store.write_summary(run_id, summarize(replay_run(store, run_id)))

def forget_all() -> None:
    """Forget every registered secret (tests)."""
    global _known_re, _known_list
    with _lock:
        _known.clear()
        _known_re = None
        _known_list = ()


def known_count() -> int:
    """How many secret forms are registered."""
    _take_loaded_configs()
    with _lock:
        return len(_known)


def known_secrets() -> tuple[str, ...]:
    """Every secret form masked now (registered, held, and those of the configs loaded so
    far), longest first: for a helper process that must mask what this one masks
    (``engine.gateway.watchdog``, which gets them on a pipe, never on its argv)."""
    _take_loaded_configs()
    with _lock:
        return _known_list


def _rebuild() -> None:
    global _known_re, _known_list
    # Longest first, so a secret that contains another is masked whole.
    ordered = sorted(_known | _held.keys(), key=len, reverse=True)
    _known_re = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None
    _known_list = tuple(ordered)


#: A header's value that is a placeholder in a hint, not a secret: ``-i api_key=VALUE``,
#: ``--input api_key=...`` (with the hint's closing backtick and full stop).
_PLACEHOLDER = re.compile(
    r"(?:VALUE|\.\.\.|<[a-z_]+>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{.*\}\}|\*\*\*)[`.):]*"
)
#: A bare value that says something about a key rather than being its value: a YAML
#: flag (``secret: true`` in a workflow template), or a template's ``{{``.
_NOT_A_VALUE = re.compile(
    r"(?i)true|false|null|none|yes|no|\{\{.*"
    # what `orchestrate agents status` says of a token (``"token": "accepted"``)
    r"|accepted|rejected(?: \(\d{3}\))?|not set(?:: .*)?"
)
#: What may stand before a key on its line for ``key: value`` to be a mapping's entry
#: (YAML, a flow mapping, a list item, a comment) rather than prose (``held no secret: q``).
_ENTRY_START = "{,[(-|#"
#: A JSON literal that is no secret: the value of a quoted key that is not a string.
_JSON_LITERAL = re.compile(r"null|true|false|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _generic(m: re.Match[str]) -> str:
    if m.re is _SHAPED:
        return m.group("p") + MASK
    if m.re is _URL_USER:
        return _url_user(m)
    if m.re is _JWT:
        return MASK
    if m.re is _PEM:
        return _pem(m)
    if m.group("f") is not None:
        return _unless_placeholder(m, "f", "fval")
    if m.group("q") is not None:
        return _unless_placeholder(m, "q", "qval")
    if m.group("h") is not None:
        return _header(m)
    return m.group("b") + MASK


def _pem(m: re.Match[str]) -> str:
    """A PEM block with its body masked, its armour lines kept."""
    body = m.group("pv")
    newline = "\\n" if "\\n" in body and "\n" not in body else "\n"  # JSON text
    return m.group("pb") + newline + MASK + newline + m.group("pe")


def _unless_placeholder(m: re.Match[str], prefix: str, value: str) -> str:
    """``prefix`` then the mask, or the match unchanged when its ``value`` group is a
    hint's placeholder (``_PLACEHOLDER``)."""
    if _PLACEHOLDER.fullmatch(m.group(value)):
        return m.group(0)
    return m.group(prefix) + MASK


def _header(m: re.Match[str]) -> str:
    """A ``key: value`` / ``key=value`` match (groups ``h``, ``hsep``, ``hscheme``,
    ``hval``) with its value masked, or unchanged when the value is no secret."""
    sep, value, scheme = m.group("hsep"), m.group("hval"), m.group("hscheme")
    if _PLACEHOLDER.fullmatch(value):
        return m.group(0)
    if scheme:
        return m.group("h") + sep + scheme + MASK
    if _NOT_A_VALUE.fullmatch(value):
        return m.group(0)  # `secret: true`, `token: null`: not a value
    if sep[:1] in ("'", '"'):  # a quoted key: JSON or a dict's repr
        return _quoted_key(m, sep, value)
    if "=" not in sep and not _entry(m):
        return m.group(0)  # `... held no secret: q`: prose, not a mapping's entry
    return m.group("h") + sep + MASK


def _quoted_key(m: re.Match[str], sep: str, value: str) -> str:
    """``_header`` for a quoted key with no scheme before its value."""
    if sep.rstrip()[-1:] in ("'", '"'):  # the value is a quoted string
        return m.group("h") + sep + MASK
    if not (value[0] in "{[" or _JSON_LITERAL.fullmatch(value)):
        return m.group(0)  # `'/etc/passwd': give ...`: prose after a quoted word
    # `"api_key": {...}`, `"authorization": null`: JSON structure, not a value: masking
    # it would break the JSON (what is inside is scanned on its own); a number is masked
    # as the string `"***"`, which keeps the JSON whole
    if value[0].isdigit() or value[0] == "-":
        return m.group("h") + sep + f'"{MASK}"'
    return m.group(0)


def _entry(m: re.Match[str]) -> bool:
    """True when the key of ``m`` (``key: value``) starts a mapping's entry: only white
    space, a name prefix (``DB_``) or one of ``_ENTRY_START`` before it on its line."""
    text, start = m.string, m.start("h")
    line = text[text.rfind("\n", 0, start) + 1 : start].rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                           "abcdefghijklmnopqrstuvwxyz"
                                                           "0123456789_.-")
    rest = line.rstrip()
    return not rest or rest[-1] in _ENTRY_START


def _url_user(m: re.Match[str]) -> str:
    user = m.group("uval")
    if ":" not in user and (
        m.group("u").lower() in _ROLE_SCHEMES or _PLAIN_USER.fullmatch(user) is not None
    ):
        return m.group(0)  # a role or a user name without a password: not a secret (docstring)
    return m.group("u") + MASK + "@"


def _take_loaded_configs() -> None:
    """Register the secrets of every config loaded since the last call
    (``engine.config.UNMASKED``; ``load_config`` only notes the config, so that a command
    that never masks anything does not read them)."""
    config = sys.modules.get("engine.config")
    pending = getattr(config, "UNMASKED", None)
    while pending:
        try:
            cfg = pending[-1]
        except IndexError:  # another thread took the last one
            return
        # Registered before it leaves the list, so another thread that finds the list
        # empty has its secrets already (registering one twice changes nothing).
        register_config(cfg)
        try:
            pending.remove(cfg)
        except ValueError:
            pass


def _gates(text: str) -> tuple[bool, bool]:
    """Whether ``text`` holds one of ``_TRIGGERS`` (in any case) and whether it holds one
    of ``_SHAPED_HINTS`` (exact case): the answers of a substring test per word, from one
    Aho-Corasick pass over the lower-cased text (``pyahocorasick``; ~3x cheaper for a 1 KB
    record, ~7x for a short string). A hint found in any case is confirmed in its own."""
    low = text.lower()
    triggered = hinted = False
    for _, is_hint in _GATE_AC.iter(low):
        if is_hint:
            hinted = True
        else:
            triggered = True
        if triggered and hinted:
            break
    if hinted:
        hinted = any(h in text for h in _SHAPED_HINTS)
    return triggered, hinted


def redact(text: str, also: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret and every secret-shaped value masked.

    ``also``: secrets of one call only (a delegation's handoff key, known to the run that
    writes the text): masked here, never remembered, so a long-running process keeps no
    registry that grows with every run. Values shorter than ``MIN_SECRET`` are ignored.
    """
    if not text:
        return text
    _take_loaded_configs()
    for secret in also:
        if secret and len(secret) >= MIN_SECRET and secret in text:
            text = text.replace(secret, MASK)
    known = _known_re
    # `in` per secret is far cheaper than the alternation's scan; the scan runs on a hit.
    if known is not None and any(secret in text for secret in _known_list):
        text = known.sub(MASK, text)
    # The generic scan is ~10x slower than the checks that rule it out for most records.
    triggered, hinted = _gates(text)
    if triggered:
        text = _GENERIC.sub(_generic, text)
    if hinted and _SHAPED_GATE.search(text):
        text = _SHAPED.sub(_generic, text)
    if "@" in text and "://" in text:
        text = _URL_USER.sub(_generic, text)
    if "eyJ" in text:
        text = _JWT.sub(_generic, text)
    if "PRIVATE KEY-----" in text:
        text = _PEM.sub(_generic, text)
    return text


def redact_obj(obj: Any, also: Iterable[str | None] = ()) -> Any:
    """A copy of a JSON-like value with every string (keys too) redacted; others unchanged.

    ``also`` as for ``redact``: secrets of this call only."""
    also = tuple(also)
    if isinstance(obj, str):
        return redact(obj, also)
    if isinstance(obj, dict):
        return {
            (redact(k, also) if isinstance(k, str) else k): redact_obj(v, also)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact_obj(v, also) for v in obj]
    return obj


def mask(obj: Any, secret: str | None) -> Any:
    """``obj`` (a JSON-like value) with ``secret`` alone replaced by ``***`` in every
    string (keys too); ``obj`` itself when it holds no string with ``secret`` in it (or
    ``secret`` is shorter than ``MIN_SECRET``). No generic scan: for a value that is
    redacted whole where it is written (``engine.files``), such as a record that must
    never quote its own handoff key, at about 1 us per 2 KB record."""
    if not secret or len(secret) < MIN_SECRET:
        return obj
    return _mask(obj, secret)


def _mask(obj: Any, secret: str) -> Any:
    if type(obj) is str:
        return obj.replace(secret, MASK) if secret in obj else obj
    if isinstance(obj, dict):
        return {
            (k.replace(secret, MASK) if type(k) is str and secret in k else k): (
                v if type(v) in _PLAIN else _mask(v, secret)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [v if type(v) in _PLAIN else _mask(v, secret) for v in obj]
    if isinstance(obj, str):
        return obj.replace(secret, MASK)
    return obj


#: Types ``mask`` passes over without a call (they hold no text).
_PLAIN = (int, float, bool, type(None))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message and traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: keep the record as it is
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_filter(logger: logging.Logger) -> None:
    """Attach one RedactingFilter to ``logger`` (idempotent)."""
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
