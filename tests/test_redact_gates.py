"""The masker's gates (``engine.redact._gates``): one Aho-Corasick pass per word list must
give the same answers as a substring test per word, so that no text the generic scans
would mask skips them."""

from __future__ import annotations

import random

from engine import redact as R


def _by_word(text: str) -> tuple[bool, bool]:
    low = text.lower()
    return any(t in low for t in R._TRIGGERS), any(h in text for h in R._SHAPED_HINTS)


def test_gates_answer_as_a_substring_test_per_word() -> None:
    rng = random.Random(7)
    words = [*R._TRIGGERS, *R._SHAPED_HINTS, "TOKEN", "Api_Key", "xo", "gh", "sk", "é", "İ"]
    filler = "ab _-=:\"'{}\n/é"
    texts = ["", "plain text", "a token here", "AKIA", "akia", "ghp_", "SK-", "İstanbul key="]
    for _ in range(3000):
        parts = [
            rng.choice(words) if rng.random() < 0.3 else rng.choice(filler)
            for _ in range(rng.randint(1, 12))
        ]
        texts.append("".join(parts))
    for text in texts:
        assert R._gates(text) == _by_word(text), text


def test_a_text_with_a_lone_surrogate_is_still_gated_and_masked() -> None:
    # the automaton reads the text's code points as they are, surrogates too
    text = "bad byte \udcff then password=hunter2hunter2 and sk-" + "a" * 20
    assert R._gates(text) == (True, True)
    masked = R.redact(text)
    assert "hunter2hunter2" not in masked
    assert "sk-***" in masked
    assert "\udcff" in masked


def test_no_word_is_both_a_trigger_and_a_hint() -> None:
    # one automaton holds both lists: a word in both would keep one of the two answers
    assert not set(R._TRIGGERS) & {h.lower() for h in R._SHAPED_HINTS}


def test_spaces_are_what_the_scans_call_white_space() -> None:
    import re
    import sys

    spaces = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if re.match(r"\s", c))
    assert R._SPACES == spaces


def test_every_text_the_generic_scan_matches_passes_the_gate() -> None:
    # the gate may let through what the scan then leaves alone, never the other way round
    rng = random.Random(11)
    words = [
        "token",
        "TOKEN",
        "Token",
        "x-openclaw-token",
        "GITHUB_TOKEN",
        "--token",
        "auth",
        "bearer",
        "secret",
        "password",
        "api_key",
        "?",
        "&",
        "sig",
        "key",
        "credentials",
    ]
    seps = ["=", ":", " ", "\t", "\u2003", '"', "'", "\\", "_", "s", "-", "", "\n", ": "]
    values = ["abc123def456", "x", "ghp_" + "a" * 36, "VALUE", "true", "{"]
    texts = [
        "token_wait_ms",
        '"token_wait_ms": null',
        "tokens: 5",
        "token = abcdef1234",
        "--token\u3000abcdef",
        'token\\"=x',
        "TOKEN\x1c:abc",
    ]
    for _ in range(20000):
        texts.append(
            "".join(
                rng.choice(words) + rng.choice(seps) + rng.choice(seps) + rng.choice(values)
                for _ in range(rng.randint(1, 3))
            )
        )
    for text in texts:
        if R._GENERIC.search(text):
            assert R._gates(text)[0], text
    assert not R._gates('"token_wait_ms": null, "tokens": 5')[0]
