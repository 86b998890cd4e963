"""The regime model: a 4-state Gaussian HMM whose states mean what their names say.

Observations per closed bar (``docs/regime.md``): the bar's log return and, where bars have a
real range, the log of its own volatility estimate (features' ``bar_vol``, which does not read
the return again). Both are per-bar quantities, close to independent from one bar to the next
given the regime, which is what an HMM assumes; overlapping windows (a 120-bar momentum, a
20-bar volatility) break that assumption and make the filtered probabilities far too sure of
themselves.

The scale is the market's own long run: returns are measured in units of the long-run typical
per-bar volatility (1.4826 x the median absolute deviation over the engine's whole memory, not
just the training window) and the bar's log volatility relative to its long-run median. Each
state starts from, and is pulled towards, a prior that says what its name means in those units
(``PRIOR``), so the crisis state exists and means "volatility far above the long-run level" even
when the training window holds no crisis. The emissions are fitted with the transitions fixed by the
expected stay in a regime (``stay_bars``): learned together, EM spends the states on bar-to-bar
noise (stays of two bars) instead of regimes; the transitions are then fitted to the data with the
emissions fixed, shrunk towards that stay. Labels are read from the fitted states
(``label_states``). The filter reads each fitted state's return, given the bar's volatility, as a
Student-t with ``tail_nu`` degrees of freedom (the volatility stays Gaussian), so a single
outlying return is evidence, not proof, while a loud bar counts in full, and it weighs the
evidence between calm states by a temper chosen at each fit (``_temper``): fitted states that
differ by a small drift are further apart than the market's, and taken at their word they make
the filter sure of the wrong state.

``fit`` runs in a worker process: it takes and returns plain data (picklable, JSON-able).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import mul
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aetherion.domain import REGIMES, Features

__all__ = [
    "BASE_INPUTS", "INPUTS", "FitResult", "RegimeModel", "TrainRequest", "fit", "label_states",
    "observation",
]

F = NDArray[np.float64]


def _log_positive(x: float | None) -> float | None:
    return math.log(x) if x is not None and x > 0 else None


#: Observation inputs by name, read from a bar's features (``None`` when not available).
INPUTS: dict[str, Any] = {
    "log_return": lambda f: f.log_return,
    "log_bar_vol": lambda f: _log_positive(f.extra.get("bar_vol")),  # features' ``bar_vol``
}
BASE_INPUTS = ("log_return",)
RANGE_SHARE = 0.9  # the bar's volatility is an input when this share of the window has a range
ECHO_CORR = 0.8  # ... and when its log correlates with log |return| less than this
#: What each state means, in long-run units: (drift, volatility). Drift is the mean return over
#: the long-run typical volatility; volatility is relative to the long-run typical level.
#: The calm states are told apart by drift first: their volatilities differ only a little
#: (bear a little louder, sideways a little quieter, as markets usually go) and the data says by
#: how much; a wider spread started EM on a split by volatility where the data has none.
PRIOR: dict[str, tuple[float, float]] = {
    "bull": (0.3, 1.0), "bear": (-0.3, 1.15), "sideways": (0.0, 0.85), "crisis": (-0.3, 4.0),
}  # the crisis volatility is 2 x ``crisis_ratio`` (see ``_prior``)
PRIOR_WEIGHT = 10.0  # the prior's covariance counts as this many observations of each state
BAR_VOL_SD = 0.4  # prior spread of one bar's log volatility around its state's level
#: The bar's volatility v (over its long-run median) enters the model as ln v where v >= 1 and
#: as (v^p - 1) / p below (the Box-Cox transform of power p; the two meet with the same slope at
#: v = 1). A single bar's variance estimate has few degrees of freedom (Rogers-Satchell's, given
#: the return, is a sum of two exponentials), so below its median its log has a long tail (a bar
#: that trends from open to close estimates almost no variance) and EM spent a calm state on
#: that tail (5-bar stays, labelled sideways); the power shortens it, as Wilson-Hilferty's cube
#: root of a variance does. Above the median the log stays: loud bars are where the volatility
#: itself moves (crises, stochastic volatility), multiplicatively; the power there cost crisis
#: recall on the shipped simulator, whose crisis minutes are a scale mixture.
VOL_POWER = 2.0 / 3.0
MIN_OBS = 20 * len(REGIMES)
MIN_VARIANCE = 1e-6  # smallest covariance eigenvalue, standardized units
TOL = 1e-3  # EM stops when the log-likelihood gains less than this
#: The emissions' stage may run up to this many times ``n_iter`` before a fit is rejected: some
#: histories converge slowly (1 in 200 of the simulator's 600-bar starts was still gaining 0.003
#: a step at 100 and converged by 200), and a market whose first fit is rejected has no regime
#: until the retry. Fits that converge sooner are unchanged.
EMISSION_ROUNDS = 3


def observation(f: Features, inputs: tuple[str, ...]) -> tuple[float | None, ...] | None:
    """The bar's inputs; None without a usable return, a missing range is ``None`` in place."""
    vals = [INPUTS[name](f) for name in inputs]
    if vals[0] is None or not math.isfinite(vals[0]):
        return None
    return tuple(v if v is not None and math.isfinite(v) else None for v in vals)


def range_informs(obs: Sequence[tuple[float | None, ...]]) -> bool:
    """Whether the bar volatility (the second input) is worth reading over these observations:
    where at least ``RANGE_SHARE`` of them have one (not close-only series, not markets of
    one-trade bars), and where it says more than the size of the return. Candles built from
    returns alone, their high and low at the open and close, give a bar volatility that is
    |return| times a constant: its log correlates with log |return| at 1 (with wicks drawn in
    proportion to the move 0.95, with a fixed spread of wicks 0.88; recorded markets and the
    simulator 0.25-0.42), and read as a second input it counts every move twice."""
    both = [(r, v) for r, v, *_ in obs if v is not None]
    if not both or len(both) < RANGE_SHARE * len(obs):
        return False
    moved = np.array([(r, v) for r, v in both if r])
    if len(moved) < 3:
        return True
    a, b = np.log(np.abs(moved[:, 0])), moved[:, 1]
    return not (np.std(a) > 0 and np.std(b) > 0 and np.corrcoef(a, b)[0, 1] >= ECHO_CORR)


@dataclass(frozen=True)
class TrainRequest:
    market: str
    timeframe: str
    obs: list[tuple[float | None, ...]]  # the engine's memory, oldest first (no later data)
    inputs: tuple[str, ...]
    train_start: int  # open times of the memory's first and last bars
    train_end: int
    seed: int = 7
    restarts: int = 1
    n_iter: int = 100
    window: int = 16_000  # EM runs on the newest ``window`` observations; the scale uses all
    stay_bars: float = 200.0
    stay_weight: float = 0.03
    crisis_ratio: float = 2.0
    tail_nu: float = 10.0  # the filter reads a state's return with Student-t tails (0: Gaussian)
    temper_floor: float = 0.4  # least weight of the evidence between calm states (1: full)


@dataclass(frozen=True)
class FitResult:
    request: TrainRequest
    ok: bool
    reason: str
    params: dict[str, Any] = field(default_factory=dict)  # RegimeModel.to_params()
    loglik: float | None = None


class _Density:
    """Log density of z under every state. Gaussian (``nu`` None), or with ``nu`` degrees of
    freedom: the return (the first input) Student-t given the others, which stay Gaussian. A
    return far out is evidence, not proof (fat tails), while the bar's log volatility, the log
    of an average over the bar's path, is read at its full weight: it is what tells a crisis
    begun from one large move. The Gaussian part is a quadratic in its inputs,
    q + w . (z_i, z_i z_j); the t part reads the return's residual given the rest, u . z + o."""

    def __init__(self, means: F, covars: F, nu: float | None = None) -> None:
        d = means.shape[1]
        self.nu = nu
        self.lo = 0 if nu is None else 1  # the Gaussian part reads inputs lo..d-1
        sub = range(self.lo, d)
        self.pairs = [(i, j) for i in sub for j in sub if j >= i]
        self.const: list[float] = []
        self.q0: list[float] = []
        self.w: list[list[float]] = []
        self.u: list[list[float]] = []  # the t part: residual u . z + o, divided by its scale
        self.o: list[float] = []
        for mu, c in zip(means, covars, strict=True):
            rest, m = c[self.lo:, self.lo:], mu[self.lo:]
            prec = np.linalg.inv(rest) if d > self.lo else np.zeros((0, 0))
            logdet = float(np.linalg.slogdet(rest)[1]) if d > self.lo else 0.0
            self.const.append(-0.5 * ((d - self.lo) * math.log(2 * math.pi) + logdet))
            self.q0.append(float(m @ prec @ m))
            self.w.append([-2.0 * float(x) for x in prec @ m]
                          + [float(prec[i - self.lo, j - self.lo]) * (1 if i == j else 2)
                             for i, j in self.pairs])
            if nu is None:
                continue
            b = prec @ c[1:, 0] if d > 1 else np.zeros(0)  # the return's regression on the rest
            scale = math.sqrt((c[0, 0] - c[1:, 0] @ b) * (nu - 2.0) / nu)
            u = np.concatenate([[1.0], -b]) / scale
            self.u.append(u.tolist())
            self.o.append(-float(u @ mu))
            self.const[-1] += (math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)
                               - 0.5 * math.log(nu * math.pi) - math.log(scale))

    def batch(self, z: F) -> F:
        """``self(row)`` for every row of z, as an (n, states) array."""
        zs = z[:, self.lo:]
        terms = np.column_stack([zs, *(z[:, i] * z[:, j] for i, j in self.pairs)])
        w = np.asarray(self.w).reshape(len(self.const), terms.shape[1])
        out: F = np.asarray(self.const) - 0.5 * (np.asarray(self.q0) + terms @ w.T)
        if self.nu is not None:
            e = z @ np.asarray(self.u).T + np.asarray(self.o)
            out -= 0.5 * (self.nu + 1.0) * np.log1p(e * e / self.nu)
        return out

    def __call__(self, z: Sequence[float]) -> list[float]:
        terms = [*z[self.lo:], *(z[i] * z[j] for i, j in self.pairs)]
        if self.nu is None:
            return [c - 0.5 * (q0 + sum(map(mul, w, terms)))
                    for c, q0, w in zip(self.const, self.q0, self.w, strict=True)]
        half, nu = 0.5 * (self.nu + 1.0), self.nu
        return [c - 0.5 * (q0 + sum(map(mul, w, terms)))
                - half * math.log1p((o + sum(map(mul, u, z))) ** 2 / nu)
                for c, q0, w, u, o in zip(self.const, self.q0, self.w, self.u, self.o, strict=True)]


class RegimeModel:
    """A fitted HMM with its scaler and label map; the online filter runs on it.

    The filter runs on Python floats: for 4 states and 1-2 inputs a step costs a few µs, a third
    of the same arithmetic through numpy's per-call overhead. A bar without a range (one trade,
    a close-only series) is filtered on the marginal density of its return."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.inputs: tuple[str, ...] = tuple(params["inputs"])
        self.mean = np.asarray(params["scaler_mean"])
        self.std = np.asarray(params["scaler_std"])
        self.startprob = np.asarray(params["startprob"])
        self.transmat = np.asarray(params["transmat"])
        self.means = np.asarray(params["means"])
        self.covars = np.asarray(params["covars"])
        self.labels: list[str] = list(params["labels"])  # state index -> regime
        self._mean, self._std = self.mean.tolist(), self.std.tolist()
        self.vol_power = float(params.get("vol_power") or 0.0)  # 0 (ln) in models stored before
        nu = params.get("tail_nu")  # None in models stored before tails were read
        self.temper = float(params.get("temper") or 1.0)
        self._calm = [i for i, name in enumerate(self.labels) if name != "crisis"]
        if not self._calm:
            self.temper = 1.0
        self._full = _Density(self.means, self.covars, nu)
        self._first = _Density(self.means[:, :1], self.covars[:, :1, :1], nu)
        self._start = self.startprob.tolist()
        self._trans_cols = self.transmat.T.tolist()  # column j: P(state i -> j) for every i

    def standardize(self, x: Sequence[float | None]) -> list[float | None]:
        z = [None if v is None else (v - m) / s
             for v, m, s in zip(x, self._mean, self._std, strict=True)]
        if len(z) > 1 and z[1] is not None and z[1] < 0 and self.vol_power:
            z[1] = math.expm1(self.vol_power * z[1]) / self.vol_power  # ``_vol_z``
        return z

    def log_emission(self, z: Sequence[float | None]) -> list[float]:
        """Log density of z (standardized) under every state; missing inputs marginalized."""
        if None in z:
            return self._first([z[0]])  # type: ignore[list-item]
        return self._full(z)  # type: ignore[arg-type]

    def filter_step(self, log_alpha: list[float] | None,
                    z: Sequence[float | None]) -> list[float]:
        """One forward-filter step, O(states²); takes and returns normalized log alpha."""
        e = self.log_emission(z)
        if log_alpha is None:
            pred = self._start
        else:
            p = list(map(math.exp, log_alpha))  # normalized: no overflow, nothing lost
            pred = [sum(map(mul, p, col)) for col in self._trans_cols]
        if self.temper != 1.0:
            e = self._tempered(e, pred)
        a = [math.log(q) + x if q > 0 else -math.inf for q, x in zip(pred, e, strict=True)]
        top = max(a)
        total = top + math.log(sum(math.exp(v - top) for v in a))
        return [v - total for v in a]

    def _tempered(self, e: list[float], pred: list[float]) -> list[float]:
        """The log densities with the calm states' differences weighed by ``temper`` (their
        likelihoods raised to it), rescaled so that given ``pred`` the calm states together
        explain the bar exactly as much as before: crisis against calm is weighed in full."""
        t, calm = self.temper, self._calm
        m = max(e[i] for i in calm)
        full = soft = 0.0
        for i in calm:
            full += pred[i] * math.exp(e[i] - m)
            soft += pred[i] * math.exp(t * (e[i] - m))
        if not full > 0 or not soft > 0:
            return e
        shift = m + math.log(full / soft)
        out = list(e)
        for i in calm:
            out[i] = shift + t * (e[i] - m)
        return out

    def regime_probs(self, log_alpha: list[float]) -> dict[str, float]:
        out = dict.fromkeys(REGIMES, 0.0)
        for name, v in zip(self.labels, log_alpha, strict=True):
            out[name] += math.exp(v)
        # exp of normalized logs sums to 1 only up to rounding (1.0000000000000002 was seen
        # when several states share a label): divided by their own sum, none exceeds 1.
        total = sum(out.values())
        return {name: p / total for name, p in out.items()}


def label_states(means: F, covars: F, inputs: Sequence[str], scaler_mean: F, scaler_std: F,
                 crisis_ratio: float, vol_power: float = VOL_POWER) -> list[str]:
    """Regime of each hidden state, from its fitted emission (standardized units):

    - ``crisis``: volatility at least ``crisis_ratio`` times the long-run typical level (read from
      the state's mean log bar volatility where bars have a range, else its return spread);
    - of the others, the highest drift is ``bull`` if it rises, the lowest ``bear`` if it falls,
      every other one ``sideways`` (drift in the returns' own units, the scaler undone)."""
    k = means.shape[0]
    vol = _state_vol(means, covars, inputs, vol_power)
    drift = means[:, 0] * scaler_std[0] + scaler_mean[0]
    labels = ["sideways"] * k
    calm = []
    for i in range(k):
        if vol[i] >= crisis_ratio:
            labels[i] = "crisis"
        else:
            calm.append(i)
    calm.sort(key=lambda i: drift[i])
    if calm and drift[calm[-1]] > 0:
        labels[calm[-1]] = "bull"
    if len(calm) > 1 and drift[calm[0]] < 0:
        labels[calm[0]] = "bear"
    return labels


def _scaler(x: F) -> tuple[F, F]:
    """Long-run location and scale: returns by median and 1.4826 x MAD (robust to the crashes
    a long memory holds), the bar's log volatility by its median (it stays in log units)."""
    loc, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    r = x[:, 0]
    loc[0] = float(np.median(r))
    mad = 1.4826 * float(np.median(np.abs(r - loc[0])))
    scale[0] = mad if mad > 0 else float(np.std(r))
    if x.shape[1] > 1:
        g = x[:, 1][np.isfinite(x[:, 1])]
        loc[1] = float(np.median(g)) if len(g) else 0.0
    return loc, scale


def _prior(n_features: int, stay_bars: float, crisis_ratio: float) -> tuple[F, F, F]:
    """Means, covariances and the fixed transition matrix of the states, in ``REGIMES`` order;
    the crisis state sits at twice ``crisis_ratio`` (4x the long-run level by default)."""
    k = len(REGIMES)
    means = np.zeros((k, n_features))
    covars = np.zeros((k, n_features, n_features))
    for i, name in enumerate(REGIMES):
        drift, vol = PRIOR[name]
        vol = 2.0 * crisis_ratio if name == "crisis" else vol
        means[i, 0], covars[i, 0, 0] = drift, vol * vol
        if n_features > 1:
            means[i, 1] = _vol_z(math.log(vol), VOL_POWER)
            covars[i, 1, 1] = (BAR_VOL_SD * min(vol, 1.0) ** VOL_POWER) ** 2  # its slope
    leave = 1.0 / max(stay_bars, 1.0)
    trans = np.full((k, k), leave / (k - 1))
    np.fill_diagonal(trans, 1.0 - leave)
    return means, covars, trans


def fit(req: TrainRequest) -> FitResult:
    """Fit from the prior's start (and seeded perturbations of it for ``restarts`` > 1), keep
    the best log-likelihood; reject a fit that does not converge or is degenerate."""
    hmm, threads = _tools()
    with threads.limit(limits=1):  # tiny matrices: OpenMP/BLAS threads only add overhead
        return _fit(req, hmm)


@functools.cache
def _tools() -> tuple[Any, Any]:
    """The HMM class and a thread-pool controller, made once per process on its first fit (the
    worker pays for importing hmmlearn, not the server's start; the controller reads the loaded
    libraries once, not at every fit)."""
    from hmmlearn.hmm import GaussianHMM
    from threadpoolctl import ThreadpoolController

    # MAP EM need not raise the likelihood every step; hmmlearn warns each time it does not.
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)

    class HMM(GaussianHMM):  # type: ignore[misc]
        """hmmlearn's Gaussian HMM, its two slowest steps done faster with the same result:
        the state densities as ``_Density`` computes them (one product of the inputs'
        quadratic terms with every state's precision, not a Cholesky factorization and a
        triangular solve per state and EM step), and the weighted second moments by an
        optimized einsum (hmmlearn's unoptimized three-operand one took a fifth of a fit)."""

        def _compute_log_likelihood(self, X: F) -> F:
            return _Density(self.means_, self._covars_).batch(X)

        def _needs_sufficient_statistics_for_covars(self) -> bool:
            return False  # accumulated below

        def _accumulate_sufficient_statistics(self, stats: dict[str, Any], X: F, lattice: F,
                                              posteriors: F, fwd: F, bwd: F) -> None:
            super()._accumulate_sufficient_statistics(stats, X, lattice, posteriors, fwd, bwd)
            if "c" in self.params:
                stats["obs*obs.T"] += np.einsum("ij,ik,il->jkl", posteriors, X, X,
                                                optimize=True)

    return HMM, ThreadpoolController()


def _fit(req: TrainRequest, GaussianHMM: Any) -> FitResult:  # the class
    x = np.array([[math.nan if v is None else v for v in o] for o in req.obs], dtype=np.float64)
    if x.ndim != 2 or len(x) < MIN_OBS:
        return FitResult(req, False, f"too few observations ({len(x)})")
    loc, scale = _scaler(x)
    if not scale[0] > 0 or not math.isfinite(scale[0]):
        return FitResult(req, False, "the returns are constant over the memory")
    win = x[-req.window:]
    z = _model_inputs(win[np.all(np.isfinite(win), axis=1)], loc, scale)
    if len(z) < MIN_OBS:
        return FitResult(req, False, f"too few complete observations ({len(z)})")
    best: Any = None
    bad: Any = None  # the last degenerate model: a rejected attempt is stored with it
    reasons: list[str] = []
    rng = np.random.default_rng(req.seed)
    for i in range(req.restarts):
        try:
            m = _em(GaussianHMM, z, req, rng.normal(0.0, 0.2, (len(REGIMES), z.shape[1])) * i)
        except (ValueError, np.linalg.LinAlgError) as e:
            reasons.append(f"restart {i}: {e}")
            continue
        if why := _degenerate(m):
            reasons.append(f"restart {i}: {why}")
            bad = m
        elif best is None or m.score_ > best.score_:
            best = m
    if best is None:
        why = "; ".join(reasons[-2:]) or "no restart succeeded"
        finite = bad is not None and all(np.all(np.isfinite(getattr(bad, a))) for a in (
            "startprob_", "transmat_", "means_", "covars_"))
        return FitResult(req, False, why, _params(bad, req, loc, scale, len(z)) if finite else {},
                         float(bad.score_) if finite and math.isfinite(bad.score_) else None)
    _anchor_crisis(best, req)
    params = _params(best, req, loc, scale, len(z))
    params["temper"] = _temper(params, z, req.temper_floor)
    return FitResult(req, True, "ok", params, float(best.score_))


TEMPERS = (1.0, 0.85, 0.7, 0.55, 0.4)  # the weights of the calm states' evidence tried
TEMPER_BARS = 1000  # the choice is scored on the window's newest bars (the whole window: the same)


def _temper(params: dict[str, Any], z: F, floor: float) -> float:
    """The weight the filter gives the evidence between calm states: of ``TEMPERS`` at least
    ``floor``, the one whose filter best predicts each next bar of the window's newest
    ``TEMPER_BARS`` (the sum of log p(x_t | x_1..t-1), which needs no labels). Fitted states
    that differ by a small drift come out further apart than they are, and a filter that takes
    them at their word is sure of the wrong state; one that weighs that evidence less predicts
    the next bar better. Crisis against calm keeps its full weight (``RegimeModel._tempered``);
    the recursion is ``RegimeModel.filter_step`` for every temper at once, in numpy (the tests
    check the two agree)."""
    calm = np.array([name != "crisis" for name in params["labels"]])
    grid = [t for t in TEMPERS if t >= floor]
    if len(grid) < 2 or not calm.any():
        return 1.0
    z = z[-TEMPER_BARS:]
    dens = _Density(np.asarray(params["means"]), np.asarray(params["covars"]), params["tail_nu"])
    e = dens.batch(z)
    top = e.max(axis=1, keepdims=True)
    top_calm = e[:, calm].max(axis=1, keepdims=True)
    lik = np.exp(e - top)
    both = np.stack([lik, lik * calm], axis=2)  # each bar's likelihoods, all and calm only
    rest = lik * ~calm
    t = np.asarray(grid)[:, None]
    # the tempered calm likelihoods up to a factor per bar, which cancels in ``scale`` below
    soft = np.where(calm, np.exp(t[None] * (e - top_calm)[:, None, :]), 0.0)
    trans = np.asarray(params["transmat"])
    alpha = np.tile(np.asarray(params["startprob"]), (len(grid), 1))
    seen = np.empty((len(z), len(grid)))  # p(x_t | x_1..t-1) per temper, up to a factor per bar
    for i, (b, s, c) in enumerate(zip(both, soft, rest, strict=True)):
        pred = alpha @ trans
        m = pred @ b
        seen[i] = m[:, 0]
        scale = m[:, 1] / np.maximum(np.vecdot(pred, s), 1e-300)
        alpha = pred * (s * scale[:, None] + c) / m[:, :1]  # normalized: it sums to m[:, 0]
    score = np.log(seen).sum(axis=0)
    return grid[int(np.argmax(score))]


def _params(m: Any, req: TrainRequest, loc: F, scale: F, n: int) -> dict[str, Any]:
    """What ``RegimeModel`` needs, JSON-able, stored in ``model_versions``."""
    return {
        "inputs": list(req.inputs), "scaler_mean": loc.tolist(), "scaler_std": scale.tolist(),
        "startprob": m.startprob_.tolist(), "transmat": m.transmat_.tolist(),
        "means": m.means_.tolist(), "covars": m.covars_.tolist(),
        "labels": label_states(m.means_, m.covars_, req.inputs, loc, scale, req.crisis_ratio),
        "vol_power": VOL_POWER,
        "stay_bars": req.stay_bars, "crisis_ratio": req.crisis_ratio, "window": n,
        "tail_nu": req.tail_nu or None,
    }


def _anchor_crisis(m: Any, req: TrainRequest) -> None:
    """A window without a crisis leaves the crisis state explaining the calm data's loudest bars
    (seen: a fitted "crisis" at 1.996x the long-run level, labelled sideways, and the next crash
    went unseen). Such a state goes back to the prior: crises are known from the long run, not
    from the window."""
    i = REGIMES.index("crisis")
    means, covars, _ = _prior(m.means_.shape[1], req.stay_bars, req.crisis_ratio)
    vol = _state_vol(m.means_, m.covars_, req.inputs, VOL_POWER)
    if vol[i] < req.crisis_ratio:
        m.means_[i], m.covars_[i] = means[i], covars[i]


def _model_inputs(x: F, loc: F, scale: F) -> F:
    """What EM reads: observations in long-run units, the volatility as ``_vol_z``."""
    z = (x - loc) / scale
    if z.shape[1] > 1:
        z[:, 1] = _vol_z(z[:, 1], VOL_POWER)
    return z


def _vol_z(log_ratio: Any, power: float) -> Any:
    """The model's volatility input from ln v, v over its long-run median (``VOL_POWER``)."""
    if not power:
        return log_ratio
    return np.where(log_ratio < 0, np.expm1(power * np.minimum(log_ratio, 0.0)) / power, log_ratio)


def _state_vol(means: F, covars: F, inputs: Sequence[str], power: float) -> F:
    """Each state's volatility relative to the long-run typical level: where bars have a range,
    the geometric mean of its two readings, its mean volatility input (the steadier estimate;
    ``_vol_z`` undone) and its returns' spread; else the spread alone. On bars drawn from a
    price path the two agree; on candles whose wicks do not grow with the volatility (a fixed
    spread drawn around the open and close) the bar volatility of a crisis 4x the calm level
    reads under 2x, and alone it left such crises unlabelled."""
    spread: F = np.sqrt(covars[:, 0, 0])
    if "log_bar_vol" not in inputs:
        return spread
    m = means[:, list(inputs).index("log_bar_vol")]
    if not power:
        bars = np.exp(m)
    else:
        below = np.maximum(1.0 + power * np.minimum(m, 0.0), 0.0) ** (1.0 / power)
        bars = np.where(m < 0, below, np.exp(np.maximum(m, 0.0)))
    out: F = np.sqrt(bars * spread)
    return out


def _em(GaussianHMM: Any, z: F, req: TrainRequest, jitter: F) -> Any:
    """One MAP EM run from the prior (moved by ``jitter``) in two stages: the emissions with the
    transitions fixed by ``stay_bars`` (so the states are regimes, not bar-to-bar noise), then
    the transitions with the emissions fixed, shrunk towards ``stay_bars`` by Dirichlet counts of
    ``stay_weight`` x the window (so the filter doubts a regime as fast as the market leaves
    one: with the prior's 200 bars alone it stayed sure for too long after a switch). "scaling"
    runs the same EM as "log" in 40% less time; a window that underflows is fitted in log space."""
    means, covars, trans = _prior(z.shape[1], req.stay_bars, req.crisis_ratio)
    k = len(REGIMES)
    for impl in ("scaling", "log"):
        m = GaussianHMM(
            n_components=k, covariance_type="full", n_iter=req.n_iter, tol=TOL, min_covar=1e-4,
            params="smc", init_params="", implementation=impl, startprob_prior=2.0,
            means_prior=means, means_weight=1.0, covars_prior=covars * PRIOR_WEIGHT,
            covars_weight=PRIOR_WEIGHT + z.shape[1])
        m.startprob_, m.transmat_ = np.full(k, 1.0 / k), trans
        m.means_, m.covars_ = means + jitter, covars
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m.fit(z)
                iters = m.monitor_.iter
                for _ in range(EMISSION_ROUNDS - 1):  # hmmlearn goes on from where it stopped
                    if not _gaining(m.monitor_.history):
                        break
                    m.fit(z)
                    iters += m.monitor_.iter
                m.emission_fit_ = (list(m.monitor_.history), iters)
                if req.stay_weight > 0:
                    m.params, m.transmat_prior = "st", 1.0 + trans * len(z) * req.stay_weight
                    m.fit(z)
                m.score_ = float(m.score(z))
                return m
            except ValueError as e:
                if impl == "log" or "underflow" not in str(e):
                    raise
    raise AssertionError("unreachable")


def _gaining(history: Sequence[float]) -> bool:
    """EM's last step still gained ``TOL`` or more (it stopped at ``n_iter``, not converged)."""
    return len(history) >= 2 and not history[-1] - history[-2] < TOL


def _degenerate(m: Any) -> str | None:
    # Converged means EM stopped because the last step gained less than ``tol`` (with priors a
    # step may lose a little likelihood while it gains posterior), not that it ran out of
    # iterations (hmmlearn's ``monitor_.converged`` is true in both cases). That is asked of the
    # emissions' stage only: the transitions' stage starts from the prior's stays and each step
    # raises the posterior, so stopped early its stays lie between the prior's and the data's
    # (seen on 3 of 30 histories of 600 simulated bars: still gaining 0.001-0.02 a step).
    h, iters = m.emission_fit_
    if len(h) < 2 or _gaining(h):
        gain = h[-1] - h[-2] if len(h) >= 2 else math.nan
        return f"did not converge in {iters} iterations (last gain {gain:.2g})"
    for name in ("startprob_", "means_", "covars_"):
        if not np.all(np.isfinite(getattr(m, name))):
            return f"non-finite {name.rstrip('_')}"
    if min(np.linalg.eigvalsh(c).min() for c in m.covars_) < MIN_VARIANCE:
        return "a state's covariance is singular"
    return None
