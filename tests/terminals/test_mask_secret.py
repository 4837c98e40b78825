"""shared.mask_secret is the regular expression it replaces, without compiling one per card."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.terminals.spin.shared import mask_secret


def _regex(text: str, secret: str) -> str:
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text, flags=re.IGNORECASE)


# Receipt-like text: letters of both cases, digits, separators, the markup's brackets, and now and
# then a letter beyond ASCII (that path is the regular expression itself).
_CHARS = st.sampled_from([*"abcAB CJOHNsmith/0123456789 -:<>*.,", "é", "ß", "K", "ſ"])
_TEXT = st.lists(_CHARS, max_size=60).map("".join)
_SECRET = st.lists(_CHARS, min_size=1, max_size=8).map("".join)


@settings(max_examples=2000, deadline=None)
@given(text=_TEXT, secret=_SECRET)
def test_mask_secret_is_the_regex(text: str, secret: str) -> None:
    assert mask_secret(text, secret) == _regex(text, secret)


@settings(max_examples=500, deadline=None)
@given(before=_TEXT, after=_TEXT, secret=_SECRET)
def test_a_planted_secret_is_masked_as_the_regex_masks_it(before: str, after: str, secret: str) -> None:
    for text in (f"{before} {secret} {after}", f"{before}{secret.lower()}{after}", secret.upper()):
        assert mask_secret(text, secret) == _regex(text, secret)


def test_examples() -> None:
    assert mask_secret("CARDHOLDER: chidi okafor", "CHIDI OKAFOR") == "CARDHOLDER: ***"
    assert mask_secret("OKAFOR/CHIDI OKAFORX", "OKAFOR") == "***/CHIDI OKAFORX"
    assert mask_secret("x513533 513533", "513533") == "x513533 ***"
    assert mask_secret("nothing here", "ABC") == "nothing here"
