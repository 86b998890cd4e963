"""The regime model: a 4-state Gaussian HMM, its labels, and its online forward filter.

Observations per closed bar (see ``docs/regime.md``): the log return, the log of the rolling
volatility, and the normalized volume delta where every bar of the training window records
aggressor sides. They are standardized with the training window's mean and standard deviation,
which travel with the model (so inference never looks at later data).

``fit`` runs in a worker process: it takes and returns plain data (picklable, JSON-able).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import add, mul
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aetherion.domain import REGIMES, Features

__all__ = [
    "INPUTS", "FitResult", "RegimeModel", "TrainRequest", "fit", "label_states", "observation",
]

F = NDArray[np.float64]

#: Observation inputs by name, read from a bar's features (``None`` when not available yet).
INPUTS: dict[str, Any] = {
    "log_return": lambda f: f.log_return,
    "momentum": lambda f: f.extra.get("momentum"),
    "log_volatility": lambda f: math.log(f.volatility) if f.volatility else None,
    "norm_volume_delta": lambda f: f.norm_volume_delta,
}
BASE_INPUTS = ("momentum", "log_volatility")
MIN_STATE_SHARE = 0.01  # a state expected to hold fewer observations than this is degenerate
MIN_VARIANCE = 1e-6  # smallest covariance eigenvalue, standardized units
CRISIS_LOG_VOL_GAP = math.log(2.0)  # crisis: volatility >= 2x the other states' median
TOL = 1e-4  # EM stops when the log-likelihood gains less than this
MAX_DROP = 1e-2  # a last EM step that loses more log-likelihood than this is not converged


def observation(f: Features, inputs: tuple[str, ...]) -> tuple[float, ...] | None:
    vals = tuple(INPUTS[name](f) for name in inputs)
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    return vals


@dataclass(frozen=True)
class TrainRequest:
    market: str
    timeframe: str
    obs: list[tuple[float, ...]]  # the training window, oldest first (no later data)
    inputs: tuple[str, ...]
    train_start: int  # open times of the window's first and last bars
    train_end: int
    seed: int = 7
    restarts: int = 4
    n_iter: int = 100


@dataclass(frozen=True)
class FitResult:
    request: TrainRequest
    ok: bool
    reason: str
    params: dict[str, Any] = field(default_factory=dict)  # RegimeModel.to_params()
    loglik: float | None = None


class RegimeModel:
    """A fitted HMM with its scaler and label map; the online filter runs on it."""

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
        # The filter runs on Python floats: for 4 states and 2-3 inputs a step costs a few µs,
        # a third of the same arithmetic through numpy's per-call overhead. Each state's log
        # density is a quadratic in z: log N_k(z) = c_k + w_k . (z_i, z_i z_j for i <= j).
        self._mean = self.mean.tolist()
        self._std = self.std.tolist()
        d = self.means.shape[1]
        self._pairs = [(i, j) for i in range(d) for j in range(i, d)]
        prec = np.linalg.inv(self.covars)
        logdet = np.linalg.slogdet(self.covars)[1]
        self._const: list[float] = []
        self._w: list[list[float]] = []
        for k in range(self.means.shape[0]):
            mu, pk = self.means[k], prec[k]
            lin = pk @ mu  # maha = z'Pz - 2 mu'Pz + mu'P mu
            self._const.append(float(-0.5 * (d * math.log(2 * math.pi) + logdet[k]
                                             + mu @ pk @ mu)))
            self._w.append([float(x) for x in lin]
                           + [-0.5 * float(pk[i, j]) * (1 if i == j else 2)
                              for i, j in self._pairs])
        self._log_start = [math.log(p) if p > 0 else -math.inf for p in self.startprob.tolist()]
        self._trans_cols = self.transmat.T.tolist()  # column j: P(state i -> j) for every i

    def standardize(self, x: Sequence[float]) -> list[float]:
        return [(v - m) / s for v, m, s in zip(x, self._mean, self._std, strict=True)]

    def log_emission(self, z: Sequence[float]) -> list[float]:
        """log N(z; mean_k, covar_k) for every state k (z standardized)."""
        terms = [*z, *(z[i] * z[j] for i, j in self._pairs)]
        return [c + sum(map(mul, w, terms)) for c, w in zip(self._const, self._w, strict=True)]

    def filter_step(self, log_alpha: list[float] | None, z: Sequence[float]) -> list[float]:
        """One forward-filter step, O(states²); takes and returns normalized log alpha."""
        e = self.log_emission(z)
        if log_alpha is None:
            a = list(map(add, self._log_start, e))
        else:
            p = list(map(math.exp, log_alpha))  # normalized: no overflow, nothing lost
            a = []
            for col, x in zip(self._trans_cols, e, strict=True):
                pred = sum(map(mul, p, col))
                a.append(math.log(pred) + x if pred > 0 else -math.inf)
        top = max(a)
        total = top + math.log(sum(math.exp(v - top) for v in a))
        return [v - total for v in a]

    def regime_probs(self, log_alpha: list[float]) -> dict[str, float]:
        out = dict.fromkeys(REGIMES, 0.0)
        for name, v in zip(self.labels, log_alpha, strict=True):
            out[name] += math.exp(v)
        # exp of normalized logs sums to 1 only up to rounding (1.0000000000000002 was seen
        # when several states share a label): divided by their own sum, none exceeds 1.
        total = sum(out.values())
        return {name: p / total for name, p in out.items()}


def label_states(means: F, scaler_mean: F, scaler_std: F) -> list[str]:
    """Regime of each hidden state, from its emission means (inputs 0: log return,
    1: log volatility): the highest volatility is crisis; of the others, the highest mean return
    is bull, the lowest bear, the remaining one sideways."""
    raw = means * scaler_std + scaler_mean  # back in the inputs' own units
    k = raw.shape[0]
    labels = ["sideways"] * k
    crisis = int(np.argmax(raw[:, 1]))
    others = [i for i in range(k) if i != crisis]
    calm = float(np.median(raw[others, 1]))
    if raw[crisis, 1] - calm >= CRISIS_LOG_VOL_GAP:
        labels[crisis] = "crisis"
    else:
        others.append(crisis)
    rest = sorted(others, key=lambda i: raw[i, 0])
    if raw[rest[-1], 0] > 0:
        labels[rest[-1]] = "bull"
    if raw[rest[0], 0] < 0:
        labels[rest[0]] = "bear"
    return labels


def fit(req: TrainRequest) -> FitResult:
    """Fit with seeded restarts and keep the best log-likelihood; reject a fit that does not
    converge or has a degenerate state."""
    from hmmlearn.hmm import GaussianHMM
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny matrices: OpenMP/BLAS threads only add overhead
        return _fit(req, GaussianHMM)


def _fit(req: TrainRequest, GaussianHMM: Any) -> FitResult:  # noqa: N803 - the class
    x = np.asarray(req.obs, dtype=np.float64)
    if x.ndim != 2 or len(x) < 20 * len(REGIMES):
        return FitResult(req, False, f"too few observations ({len(x)})")
    mean, std = x.mean(axis=0), x.std(axis=0)
    if np.any(std <= 0) or not np.all(np.isfinite(std)):
        return FitResult(req, False, "an input is constant over the window")
    z = (x - mean) / std
    best: Any = None
    best_score = -math.inf
    reasons = []
    for i in range(req.restarts):
        try:
            m, score = _em(GaussianHMM, z, req, i)
        except (ValueError, np.linalg.LinAlgError) as e:
            reasons.append(f"restart {i}: {e}")
            continue
        why = _degenerate(m, z)
        if why:
            reasons.append(f"restart {i}: {why}")
            continue
        if score > best_score:
            best, best_score = m, score
    if best is None:
        return FitResult(req, False, "; ".join(reasons[-2:]) or "no restart succeeded")
    params = {
        "inputs": list(req.inputs), "scaler_mean": mean.tolist(), "scaler_std": std.tolist(),
        "startprob": best.startprob_.tolist(), "transmat": best.transmat_.tolist(),
        "means": best.means_.tolist(), "covars": best.covars_.tolist(),
        "labels": label_states(best.means_, mean, std),
    }
    return FitResult(req, True, "ok", params, best_score)


def _em(GaussianHMM: Any, z: F, req: TrainRequest, i: int) -> tuple[Any, float]:  # noqa: N803
    """One seeded EM run. "scaling" runs the same EM as "log" (the same iterations and scores
    to 1e-9 on our windows) without a logsumexp per step, in 40% less time; a window so extreme
    that its likelihoods underflow is fitted again in log space."""
    for impl in ("scaling", "log"):
        m = GaussianHMM(n_components=len(REGIMES), covariance_type="full", n_iter=req.n_iter,
                        tol=TOL, random_state=req.seed + i, min_covar=1e-4, implementation=impl)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m.fit(z)
                return m, float(m.score(z))
            except ValueError as e:
                if impl == "log" or "underflow" not in str(e):
                    raise
    raise AssertionError("unreachable")


def _degenerate(m: Any, z: F) -> str | None:
    # hmmlearn's ``monitor_.converged`` is also true when EM merely ran out of iterations:
    # converged here means EM stopped because the last step gained less than ``tol``
    # (a tiny loss, rounding near the optimum, counts; a real one does not).
    h = m.monitor_.history
    if len(h) < 2 or not -MAX_DROP <= h[-1] - h[-2] < m.tol:
        gain = h[-1] - h[-2] if len(h) >= 2 else math.nan
        return f"did not converge in {m.monitor_.iter} iterations (last gain {gain:.2g})"
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        if not np.all(np.isfinite(getattr(m, name))):
            return f"non-finite {name.rstrip('_')}"
    occupancy = m.predict_proba(z).mean(axis=0)
    if occupancy.min() < MIN_STATE_SHARE:
        return f"a state holds {occupancy.min():.1%} of the window"
    if min(np.linalg.eigvalsh(c).min() for c in m.covars_) < MIN_VARIANCE:
        return "a state's covariance is singular"
    return None
