"""gateway.privacy.samplers: the exact samplers against their exact distributions, side by side
with OpenDP's samplers under the same statistical tests; and proof that the module never
touches a float or the `random` module's generator.

Every statistical check rejects at alpha = 0.001 (chi-square) or at 4 standard errors (means,
variances, frequencies), so a correct sampler still fails one of these tests now and then:
about 1.5% of runs across the whole file.
"""

from __future__ import annotations

import ast
import contextlib
import math
import random
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import FrameType
from typing import Any

import opendp.prelude as dp
import pytest

from gateway.privacy import samplers
from gateway.privacy.samplers import (
    bernoulli,
    bernoulli_exp,
    discrete_laplace,
    randomized_response,
    uniform,
)

dp.enable_features("contrib")

ALPHA = 0.001
MIN_EXPECTED = 5.0  # per chi-square bin
SE_LIMIT = 4.0
N = 100_000
N_OPENDP_RR_SHORT = 25_000  # OpenDP's randomized response costs ~80 us a call from Python


# -- the chi-square distribution, without scipy ---------------------------------------------

def upper_gamma_regularized(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a): a series for P = 1 - Q below x = a + 1, a continued
    fraction (modified Lentz) above (Numerical Recipes, 6.2)."""
    if x <= 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        denominator = a
        for _ in range(100_000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(log_prefactor) * h


def chi_square_sf(statistic: float, df: int) -> float:
    """P(chi-square with df degrees of freedom >= statistic)."""
    return upper_gamma_regularized(df / 2, statistic / 2)


def chi_square_p(observed: Counter[int], expected: dict[int, float]) -> tuple[float, int]:
    """Pearson's goodness of fit of counts per bin to expected counts (no fitted parameters):
    (p-value, degrees of freedom)."""
    assert set(observed) <= set(expected), set(observed) - set(expected)
    statistic = sum((observed[b] - e) ** 2 / e for b, e in expected.items())
    df = len(expected) - 1
    return chi_square_sf(statistic, df), df


@pytest.mark.parametrize(("df", "critical"), [(1, 10.828), (5, 20.515), (10, 29.588),
                                              (30, 59.703), (100, 149.449)])
def test_chi_square_sf_matches_published_critical_values(df: int, critical: float) -> None:
    # The 0.999 quantiles from standard tables (3 decimals), so the tail is 0.001 to ~0.5%.
    assert chi_square_sf(critical, df) == pytest.approx(ALPHA, rel=5e-3)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.9, 2.1, 7.0, 40.0])
def test_chi_square_sf_has_the_closed_form_for_two_degrees(x: float) -> None:
    assert chi_square_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)


# -- discrete Laplace -----------------------------------------------------------------------

def laplace_q(scale: Fraction) -> float:
    return math.exp(-1 / float(scale))


def laplace_pmf(x: int, q: float) -> float:
    return (1 - q) / (1 + q) * q ** abs(x)


def laplace_tail(m: int, q: float) -> float:
    """P(X > m) = P(X < -m)."""
    return q ** (m + 1) / (1 + q)


def laplace_bins(q: float, n: int) -> tuple[int, dict[int, float]]:
    """Bins -m..m with an expected count >= 5 each, and the two tails pooled into -m-1 and
    m+1 (each also >= 5): (m, expected count per bin)."""
    m = 0
    while n * laplace_pmf(m + 1, q) >= MIN_EXPECTED:
        m += 1
    while n * laplace_tail(m, q) < MIN_EXPECTED:
        m -= 1
    expected = {x: n * laplace_pmf(x, q) for x in range(-m, m + 1)}
    expected[m + 1] = expected[-m - 1] = n * laplace_tail(m, q)
    return m, expected


def laplace_moments(q: float) -> tuple[float, float]:
    """(variance, fourth central moment), the latter by summing the pmf."""
    variance = 2 * q / (1 - q) ** 2
    fourth, x = 0.0, 1
    while True:
        term = 2 * laplace_pmf(x, q) * x**4
        fourth += term
        if term < fourth * 1e-18:
            return variance, fourth
        x += 1


def laplace_problems(samples: Sequence[int], scale: Fraction) -> list[str]:
    """What is wrong with `samples` as draws from the discrete Laplace(scale); [] if nothing."""
    n = len(samples)
    q = laplace_q(scale)
    problems = []
    m, expected = laplace_bins(q, n)
    observed = Counter(max(-m - 1, min(m + 1, x)) for x in samples)
    p, df = chi_square_p(observed, expected)
    if p < ALPHA:
        problems.append(f"chi-square p = {p:.2g} (df {df})")
    variance, fourth = laplace_moments(q)
    mean = sum(samples) / n
    mean_se = math.sqrt(variance / n)
    if abs(mean) > SE_LIMIT * mean_se:
        problems.append(f"mean {mean:.4f} is {abs(mean) / mean_se:.1f} SE from 0")
    sample_variance = sum((x - mean) ** 2 for x in samples) / (n - 1)
    variance_se = math.sqrt((fourth - variance**2) / n)
    if abs(sample_variance - variance) > SE_LIMIT * variance_se:
        problems.append(f"variance {sample_variance:.4f} is "
                        f"{abs(sample_variance - variance) / variance_se:.1f} SE from "
                        f"{variance:.4f}")
    return problems


def confirmed(draw: Callable[[], Sequence[int]],
              problems_of: Callable[[Sequence[int]], list[str]]) -> list[str]:
    """The problems of a sample, confirmed on a fresh one. A correct sampler fails a test at
    alpha = 0.001 once in a thousand runs, and this file runs a dozen such tests in two worlds;
    a faulty one fails every run. Counting a failure only when a second, independent sample
    fails too keeps every test at alpha per sample while CI sees false alarms at alpha squared."""
    first = problems_of(draw())
    return problems_of(draw()) if first else []


def opendp_laplace(scale: Fraction, n: int) -> list[int]:
    """n draws of OpenDP's discrete Laplace (noise added to n zeros in one call)."""
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    mechanism = dp.m.make_laplace(*space, scale=float(scale))
    noisy: list[int] = mechanism([0] * n)
    return noisy


@pytest.mark.parametrize("scale", [Fraction(1), Fraction(7, 3), Fraction(20)])
def test_discrete_laplace_matches_the_exact_pmf_like_opendp(scale: Fraction) -> None:
    draws: dict[str, Callable[[], Sequence[int]]] = {
        "gateway": lambda: [discrete_laplace(scale) for _ in range(N)],
        "opendp": lambda: opendp_laplace(scale, N),
    }
    problems = {name: confirmed(draw, lambda samples: laplace_problems(samples, scale))
                for name, draw in draws.items()}
    assert problems == {"gateway": [], "opendp": []}


def test_laplace_checks_have_power() -> None:
    """The same checks reject the wrong scale and a shifted sampler."""
    scale = Fraction(7, 3)
    samples = [discrete_laplace(scale) for _ in range(N)]
    assert laplace_problems(samples, Fraction(5, 2))
    assert laplace_problems([x + (x == 0) for x in samples], scale)  # 0 -> 1 now and then


def test_discrete_laplace_accepts_int_and_small_scales() -> None:
    assert {discrete_laplace(1) for _ in range(200)} > {-1, 0, 1}
    assert Counter(discrete_laplace(Fraction(1, 10)) for _ in range(200))[0] > 190


# -- randomized response --------------------------------------------------------------------

def rr_expected(true_index: int, k: int, epsilon: Fraction, n: int) -> dict[int, float]:
    e = math.exp(float(epsilon))
    return {y: n * (e if y == true_index else 1.0) / (e + k - 1) for y in range(k)}


def opendp_rr(true_index: int, k: int, epsilon: Fraction, n: int) -> list[int]:
    e = math.exp(float(epsilon))
    mechanism = dp.m.make_randomized_response(list(range(k)), prob=e / (e + k - 1))
    return [mechanism(true_index) for _ in range(n)]


@pytest.mark.parametrize(("true_index", "k", "epsilon", "n_opendp"), [
    (2, 5, Fraction(1, 2), N),
    (2, 5, Fraction(1), N_OPENDP_RR_SHORT),
    (1, 2, Fraction(1, 2), N_OPENDP_RR_SHORT),
    (1, 2, Fraction(1), N_OPENDP_RR_SHORT),
])
def test_randomized_response_matches_k_rr_like_opendp(true_index: int, k: int,
                                                      epsilon: Fraction, n_opendp: int) -> None:
    draws: dict[str, Callable[[], Sequence[int]]] = {
        "gateway": lambda: [randomized_response(true_index, k, epsilon) for _ in range(N)],
        "opendp": lambda: opendp_rr(true_index, k, epsilon, n_opendp),
    }

    def problems_of(samples: Sequence[int]) -> list[str]:
        p, _ = chi_square_p(Counter(samples), rr_expected(true_index, k, epsilon, len(samples)))
        return [f"chi-square p = {p:.2g}"] if p < ALPHA else []

    problems = {name: confirmed(draw, problems_of) for name, draw in draws.items()}
    assert problems == {"gateway": [], "opendp": []}


def test_randomized_response_check_has_power() -> None:
    samples = Counter(randomized_response(2, 5, Fraction(1, 2)) for _ in range(N))
    p, _ = chi_square_p(samples, rr_expected(2, 5, Fraction(6, 10), N))
    assert p < ALPHA


# -- Bernoulli ------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_frequency(gamma: Fraction) -> None:
    p = math.exp(-float(gamma))
    if gamma == 0:
        assert all(bernoulli_exp(gamma) for _ in range(N))
        return
    se = math.sqrt(p * (1 - p) / N)

    def problems_of(draws: Sequence[int]) -> list[str]:
        rate = sum(draws) / N
        return [f"rate {rate} vs {p} (SE {se})"] if abs(rate - p) > SE_LIMIT * se else []

    assert confirmed(lambda: [bernoulli_exp(gamma) for _ in range(N)], problems_of) == []


def test_bernoulli_exp_extremes() -> None:
    assert not any(bernoulli_exp(Fraction(40)) for _ in range(1000))
    assert bernoulli_exp(0) is True


@pytest.mark.parametrize("p", [Fraction(0), Fraction(1), Fraction(1, 3), Fraction(7, 10), 1])
def test_bernoulli_is_exact(p: Fraction | int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over every value randbelow(denominator) can return, True exactly numerator times."""
    p = Fraction(p)
    asked: list[int] = []
    trues = 0
    for outcome in range(p.denominator):
        def fixed(n: int, outcome: int = outcome) -> int:
            asked.append(n)
            return outcome
        monkeypatch.setattr(secrets, "randbelow", fixed)
        trues += bernoulli(p)
    assert asked == [p.denominator] * p.denominator  # one draw each
    assert trues == p.numerator


@pytest.mark.parametrize("p", [Fraction(1, 3), Fraction(7, 10)])
def test_bernoulli_frequency(p: Fraction) -> None:
    hits = sum(bernoulli(p) for _ in range(N))
    se = math.sqrt(p * (1 - p) / N)
    assert abs(hits / N - p) <= SE_LIMIT * se


def test_uniform_covers_its_range() -> None:
    assert {uniform(7) for _ in range(500)} == set(range(7))
    assert uniform(1) == 0


# -- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: uniform(0), "n >= 1"),
    (lambda: bernoulli(Fraction(-1, 3)), r"0 <= p <= 1, got -1/3"),
    (lambda: bernoulli(Fraction(4, 3)), r"0 <= p <= 1, got 4/3"),
    (lambda: bernoulli_exp(Fraction(-1, 2)), r"gamma >= 0, got -1/2"),
    (lambda: discrete_laplace(0), r"scale > 0, got 0"),
    (lambda: discrete_laplace(Fraction(-3, 2)), r"scale > 0, got -3/2"),
    (lambda: randomized_response(0, 1, 1), r"k >= 2 categories, got 1"),
    (lambda: randomized_response(5, 5, 1), r"0 <= true_index < k = 5, got 5"),
    (lambda: randomized_response(-1, 5, 1), r"0 <= true_index < k = 5, got -1"),
    (lambda: randomized_response(0, 5, 0), r"epsilon > 0, got 0"),
    (lambda: randomized_response(0, 5, Fraction(-1, 4)), r"epsilon > 0, got -1/4"),
])
def test_bad_arguments_raise_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call", [
    lambda: discrete_laplace(0.5),  # type: ignore[arg-type]
    lambda: bernoulli(0.5),  # type: ignore[arg-type]
    lambda: bernoulli_exp(1.0),  # type: ignore[arg-type]
    lambda: randomized_response(0, 2, 1.0),  # type: ignore[arg-type]
])
def test_floats_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(TypeError, match="must be an int or a Fraction, not float"):
        call()


# -- no floats, no `random` -----------------------------------------------------------------

SAMPLERS_PATH = Path(samplers.__file__)
ALLOWED_IMPORTS = {"__future__", "secrets", "fractions"}
FORBIDDEN_NAMES = {"float", "complex", "random", "math", "numpy", "decimal"}


def test_module_source_has_no_floats_and_no_random() -> None:
    """Statically: no float literal, no `float`, nothing imported but secrets and fractions,
    and no `/` or `**` at all (an int / int or int ** -1 is a float the tracer below could
    miss, since it sees variables, not intermediate values)."""
    tree = ast.parse(SAMPLERS_PATH.read_text())
    problems = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            problems.append(f"{where}: literal {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            problems.append(f"{where}: name {node.id}")
        elif isinstance(node, ast.Import):
            problems += [f"{where}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] not in ALLOWED_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") not in ALLOWED_IMPORTS:
            problems.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div
                                                                         | ast.Pow):
            problems.append(f"{where}: operator {type(node.op).__name__}")
    assert problems == []
    assert sum(isinstance(n, ast.FunctionDef) for n in ast.walk(tree)) >= 5  # parsed the module


class FloatWatch:
    """Traces every frame of samplers.py (and the frames it calls) line by line and records any
    local variable, argument or return value that is a float; also any use of the `random`
    module's own generator. `secrets` is built on random.SystemRandom (os.urandom), so a
    random.py frame is allowed only below secrets.py and only on a SystemRandom."""

    C_FORBIDDEN_MODULES = {"math", "cmath", "random", "_random", "numpy"}

    def __init__(self, watched_file: str) -> None:
        self.watched = watched_file
        self.problems: list[str] = []
        self.functions: Counter[str] = Counter()
        self.lines = 0
        self.random_frames = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        old_trace, old_profile = sys.gettrace(), sys.getprofile()
        sys.setprofile(self._profile)
        sys.settrace(self._call)
        try:
            yield
        finally:
            sys.settrace(old_trace)
            sys.setprofile(old_profile)

    def _is_watched(self, frame: FrameType | None) -> bool:
        return frame is not None and frame.f_code.co_filename == self.watched

    def _floats(self, frame: FrameType, event: str, value: Any = None) -> None:
        where = f"{frame.f_code.co_name}:{frame.f_lineno} ({event})"
        for name, local in frame.f_locals.items():
            if isinstance(local, float):
                self.problems.append(f"{where}: local {name} = {local!r}")
        if isinstance(value, float):
            self.problems.append(f"{where}: returns {value!r}")

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename == random.__file__:
            self.random_frames += 1
            caller = frame.f_back
            while caller is not None and caller.f_code.co_filename == random.__file__:
                caller = caller.f_back
            owner = frame.f_locals.get("self")
            if (caller is None or caller.f_code.co_filename != secrets.__file__
                    or not isinstance(owner, random.SystemRandom)):
                self.problems.append(f"random.{code.co_name} entered, not via secrets")
            return None
        if self._is_watched(frame):
            self.functions[code.co_name] += 1
            self._floats(frame, event)
            return self._watched_line
        if self._is_watched(frame.f_back):  # a callee: its arguments now, its result later
            self._floats(frame, "called")
            frame.f_trace_lines = False
            return self._callee_return
        return None

    def _watched_line(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.lines += 1
        self._floats(frame, event, arg if event == "return" else None)
        return self._watched_line

    def _callee_return(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return":
            self._floats(frame, "callee return", arg)
        return self._callee_return

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        """C functions, which make no frame: no bound method of a random.Random other than
        SystemRandom anywhere, and nothing from math or random called by samplers.py (the
        fractions module may use math.gcd)."""
        if event != "c_call":
            return
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or ""
        if (isinstance(owner, random.Random) and not isinstance(owner, random.SystemRandom)) or (
                self._is_watched(frame) and module.split(".")[0] in self.C_FORBIDDEN_MODULES):
            self.problems.append(f"C call {arg!r} from {frame.f_code.co_name}")


def exercise_every_sampler(times: int) -> None:
    for _ in range(times):
        uniform(10)
        bernoulli(Fraction(2, 7))
        bernoulli(1)
        bernoulli_exp(Fraction(5, 2))
        bernoulli_exp(Fraction(1, 3))
        bernoulli_exp(0)
        discrete_laplace(Fraction(7, 3))
        discrete_laplace(20)
        discrete_laplace(Fraction(1, 3))
        randomized_response(2, 5, Fraction(1, 2))
        randomized_response(0, 2, 1)


def test_samplers_never_hold_a_float_or_use_random() -> None:
    watch = FloatWatch(samplers.__file__)
    with watch.running():
        exercise_every_sampler(300)
    assert watch.problems == []
    # Not vacuous: the tracer saw every function of the module, line by line, and followed
    # secrets into random.py.
    public = {"uniform", "bernoulli", "bernoulli_exp", "discrete_laplace", "randomized_response"}
    helpers = {"_exact", "_bernoulli_ratio", "_bernoulli_exp_ratio", "_bernoulli_exp_unit"}
    assert set(watch.functions) >= public | helpers, watch.functions
    assert all(watch.functions[f] >= 300 for f in public)
    assert watch.lines > 10_000
    assert watch.random_frames > 1000


def planted(source: str) -> Callable[[], object]:
    """A function that the tracer takes for part of samplers.py."""
    namespace: dict[str, Any] = {"random": random}
    exec(compile(source, samplers.__file__, "exec"), namespace)
    function: Callable[[], object] = namespace["planted"]
    return function


@pytest.mark.parametrize(("source", "problem"), [
    ("def planted():\n    x = 1\n    y = x / 2\n    return y // 1\n", "local y = 0.5"),
    ("def planted():\n    return 3 / 4\n", "returns 0.75"),
    ("def planted():\n    return int(random.random() * 0)\n", "C call"),
    ("def planted():\n    return random.randrange(3)\n", "random.randrange entered"),
    ("def planted():\n    return random.Random(1).randrange(3)\n", "not via secrets"),
])
def test_float_watch_catches_planted_floats_and_random(source: str, problem: str) -> None:
    watch = FloatWatch(samplers.__file__)
    with watch.running():
        planted(source)()
    assert any(problem in p for p in watch.problems), watch.problems
