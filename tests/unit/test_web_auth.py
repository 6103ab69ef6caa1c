"""gateway.web.auth: password rules and hashing, random codes, TOTP steps, the throttle."""

from __future__ import annotations

import re

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.web import auth


def test_argon2id_parameters_meet_the_minimum() -> None:
    encoded = auth.hash_password("a perfectly fine passphrase")
    match = re.match(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$", encoded)
    assert match, encoded
    m, t, p = map(int, match.groups())
    assert m >= 19 * 1024 and t >= 2 and p == 1
    assert auth.verify_password(encoded, "a perfectly fine passphrase")
    assert not auth.verify_password(encoded, "a perfectly fine passphrasE")
    assert not auth.verify_password(None, "anything at all")  # unknown user: still no


@pytest.mark.parametrize(("password", "problem"), [
    ("short", "too short"),
    ("123456789", "too short"),
    ("1234567890", "most common"),
    ("qwertyuiop", "most common"),
    ("Password12", "most common"),  # compared case-insensitively
    ("aaaaaaaaaaaa", "too few different"),
    ("x" * 129, "too long"),
    ("alice-in-chains", "user name"),
])
def test_weak_passwords_are_refused_with_the_reason(password: str, problem: str) -> None:
    found = auth.password_problem(password, "alice")
    assert found is not None and problem in found


def test_good_passwords_pass_up_to_128_characters() -> None:
    assert auth.password_problem("Kettle-Harbour-Lantern-42", "alice") is None
    assert auth.password_problem(("correct horse battery staple " * 5)[:128]) is None
    assert len(auth.common_passwords()) == 10_000


def test_random_codes_have_the_promised_shape_and_entropy() -> None:
    code = auth.new_setup_code()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    assert auth.normalize_code(code.lower().replace("-", " ")) == code.replace("-", "")
    assert len({auth.new_setup_code() for _ in range(200)}) == 200
    assert len(auth.new_token()) >= 43  # 256 bits in URL-safe base64
    token_id, token = auth.new_api_token()
    assert auth.api_token_id(token) == token_id
    assert auth.api_token_id(token + "x") is None
    assert auth.api_token_id("hgw_nothex00000_" + "a" * 43) is None
    assert len(set(auth.new_recovery_codes())) == auth.RECOVERY_CODES


def test_totp_step_accepts_one_step_of_drift_and_nothing_else() -> None:
    secret = auth.new_totp_secret()
    totp = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = int(now // 30)
    assert auth.totp_step(secret, totp.at(now), now) == step
    assert auth.totp_step(secret, totp.at(now - 30), now) == step - 1
    assert auth.totp_step(secret, totp.at(now + 30), now) == step + 1
    assert auth.totp_step(secret, totp.at(now - 90), now) is None
    assert auth.totp_step(secret, "12345", now) is None
    assert auth.totp_step(secret, "abcdef", now) is None
    assert auth.qr_svg(auth.totp_uri(secret, "alice")).startswith("<svg")


def test_throttle_grows_delays_and_forgets_after_the_window() -> None:
    t = auth.Throttle()
    for i in range(5):
        assert t.retry_after("k", 100.0 + i) == 0
        t.failed("k", 100.0 + i)
    assert t.retry_after("k", 104.0) == pytest.approx(30.0)
    assert t.retry_after("k", 134.0) == 0  # the delay has passed: one more try
    t.failed("k", 134.0)
    assert t.retry_after("k", 134.0) == pytest.approx(60.0)  # doubled
    assert t.first_refusal("k") and not t.first_refusal("k")  # noted once per failure
    t.failed("k", 200.0)
    assert t.retry_after("k", 200.0) == pytest.approx(120.0)
    assert t.retry_after("other", 200.0) == 0  # keys are independent
    assert t.retry_after("k", 200.0 + 15 * 60) == 0  # never a permanent lockout
    t.failed("k", 1200.0)
    assert not t.first_refusal("other")
    t.clear("k")
    assert t.retry_after("k", 1200.0) == 0


@given(st.lists(st.floats(0, 10_000), max_size=60))
def test_throttle_delay_never_exceeds_the_window(times: list[float]) -> None:
    t = auth.Throttle()
    for now in sorted(times):
        t.failed("k", now)
        assert 0 <= t.retry_after("k", now) <= t.window_s


def test_throttle_memory_is_bounded() -> None:
    t = auth.Throttle(max_keys=100)
    for i in range(1000):
        t.failed(f"user{i}", float(i))
    assert len(t._failures) == 100
