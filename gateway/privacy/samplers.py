"""Exact samplers for local differential privacy: integers, `fractions` and `secrets` only.

Textbook floating-point Laplace noise is not private: the set of doubles it can return
depends on the true value, so the low bits of a release can give the input away (Mironov,
"On Significance of the Least Significant Bits for Differential Privacy", CCS 2012). These
samplers draw from the exact distributions instead, following Canonne, Kamath and Steinke,
"The Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithms 1 and 2.

No floats, no `random` (its Mersenne Twister is predictable); and no `/` at all, so that no
true division of integers can slip in: ratios stay (numerator, denominator) pairs.
"""

from __future__ import annotations

import secrets
from fractions import Fraction

__all__ = ["bernoulli", "bernoulli_exp", "discrete_laplace", "randomized_response", "uniform"]


def _exact(value: Fraction | int, name: str) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    raise TypeError(f"{name} must be an int or a Fraction, not {type(value).__name__}")


def _bernoulli_ratio(num: int, den: int) -> bool:
    """True with probability num/den (0 <= num <= den, den >= 1)."""
    return secrets.randbelow(den) < num


def _bernoulli_exp_ratio(num: int, den: int) -> bool:
    """True with probability exp(-num/den), num >= 0, den >= 1 (CKS Algorithm 1)."""
    whole, num = divmod(num, den)
    for _ in range(whole):  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if not _bernoulli_exp_unit(1, 1):
            return False
    return _bernoulli_exp_unit(num, den)


def _bernoulli_exp_unit(num: int, den: int) -> bool:
    """True with probability exp(-gamma) for gamma = num/den in [0, 1]: draw A_k ~ Bernoulli
    (gamma/k) for k = 1, 2, ... until one is 0; True iff that k is odd."""
    k = 1
    while _bernoulli_ratio(num, den * k):
        k += 1
    return k % 2 == 1


def uniform(n: int) -> int:
    """Uniform on {0, ..., n-1}."""
    if n < 1:
        raise ValueError(f"uniform needs n >= 1, got {n}")
    return secrets.randbelow(n)


def bernoulli(p: Fraction | int) -> bool:
    """True with probability exactly p, 0 <= p <= 1."""
    p = _exact(p, "p")
    if not 0 <= p <= 1:
        raise ValueError(f"bernoulli needs 0 <= p <= 1, got {p}")
    return _bernoulli_ratio(p.numerator, p.denominator)


def bernoulli_exp(gamma: Fraction | int) -> bool:
    """True with probability exactly exp(-gamma), gamma >= 0."""
    gamma = _exact(gamma, "gamma")
    if gamma < 0:
        raise ValueError(f"bernoulli_exp needs gamma >= 0, got {gamma}")
    return _bernoulli_exp_ratio(gamma.numerator, gamma.denominator)


def discrete_laplace(scale: Fraction | int) -> int:
    """An integer x with P(x) proportional to exp(-|x| / scale), scale > 0 (CKS Algorithm 2,
    with scale = t/s)."""
    scale = _exact(scale, "scale")
    if scale <= 0:
        raise ValueError(f"discrete_laplace needs scale > 0, got {scale}")
    t, s = scale.numerator, scale.denominator
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp_ratio(u, t):
            continue
        v = 0
        while _bernoulli_exp_unit(1, 1):
            v += 1
        y = (u + t * v) // s  # geometric, P(y) proportional to exp(-y * s / t)
        negative = secrets.randbelow(2) == 1
        if negative and y == 0:
            continue  # else 0 would be counted twice
        return -y if negative else y


def randomized_response(true_index: int, k: int, epsilon: Fraction | int) -> int:
    """k-ary randomized response: true_index with probability e^eps / (e^eps + k - 1), each
    other index in range(k) with probability 1 / (e^eps + k - 1).

    By rejection: a uniform index is kept at once if it is the truth, else with probability
    exp(-eps), so P(y) is proportional to 1 for the truth and exp(-eps) for each other."""
    epsilon = _exact(epsilon, "epsilon")
    if k < 2:
        raise ValueError(f"randomized_response needs k >= 2 categories, got {k}")
    if not 0 <= true_index < k:
        raise ValueError(f"randomized_response needs 0 <= true_index < k = {k}, "
                         f"got {true_index}")
    if epsilon <= 0:
        raise ValueError(f"randomized_response needs epsilon > 0, got {epsilon}")
    while True:
        y = secrets.randbelow(k)
        if y == true_index or _bernoulli_exp_ratio(epsilon.numerator, epsilon.denominator):
            return y
