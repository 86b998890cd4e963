"""The synchronous chain of one market: candles → features → regime → decision, no I/O.

Live and both replays drive the same :class:`MarketPipeline`, built by :func:`build_pipeline`;
only where its events go (the :class:`~aetherion.pipeline.sinks.Sink`), where its ticks come
from and who trains its models (the :class:`~aetherion.pipeline.trainer.Trainer`) differ. The
hot path is :meth:`MarketPipeline.on_ticks` (batches of trades into candles); everything past
the candles runs once per closed bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from numpy.typing import ArrayLike

from aetherion.config import MarketConfig, Settings
from aetherion.decision.config import DecisionConfig
from aetherion.decision.model import PolicyState
from aetherion.decision.policy import DecisionPolicy
from aetherion.domain import BEFORE_ANY_TIME, Bar, Features, ModelVersion, Tick
from aetherion.features.candles import CandleEngine
from aetherion.features.engine import FeatureEngine
from aetherion.pipeline.sinks import Sink
from aetherion.pipeline.trainer import InlineTrainer, Trainer
from aetherion.regime.config import RegimeConfig
from aetherion.regime.engine import RegimeEngine
from aetherion.regime.model import FitResult

__all__ = ["MarketPipeline", "StageConfig", "build_pipeline"]


@dataclass(frozen=True, slots=True)
class StageConfig:
    """What the stages of every market run with."""

    timeframes: tuple[str, ...]
    bar_grace_ms: int
    regime: RegimeConfig
    decision: DecisionConfig  # its timeframe resolved

    @classmethod
    def of(cls, settings: Settings) -> StageConfig:
        return cls(settings.timeframes, settings.bar_grace_ms, settings.regime,
                   settings.decision_config())


def build_pipeline(market: MarketConfig, settings: Settings | StageConfig, sink: Sink,
                   trainer: Trainer | None = None) -> MarketPipeline:
    """The one way a pipeline is put together: live markets, both replays, tests, benchmarks."""
    stages = settings if isinstance(settings, StageConfig) else StageConfig.of(settings)
    return MarketPipeline(market, stages, sink, trainer or InlineTrainer())


class MarketPipeline:
    """The synchronous chain of one market. Bars with ``revision > 0`` are stored and shown but
    never re-run through features, regime or decision (those stay what was known then)."""

    def __init__(self, market: MarketConfig, stages: StageConfig, sink: Sink,
                 trainer: Trainer) -> None:
        self.market = market
        self.sink = sink
        self.trainer = trainer
        self.candles = CandleEngine(market.id, stages.timeframes, stages.bar_grace_ms)
        self.features = {tf: FeatureEngine(market.id, tf) for tf in stages.timeframes}
        self.regime = RegimeEngine(market.id, self.candles.timeframes, stages.regime)
        self.policy = DecisionPolicy(market.id, stages.decision)
        self.last_closed: dict[str, Bar] = {}
        self.last_features: dict[str, Features] = {}
        self.event_ms = BEFORE_ANY_TIME  # close time of the latest bars fed through (event time)

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        self.sink.ticks(self.market, ticks)
        self._bars(self.candles.on_ticks(ticks))

    def on_trades(self, ts: ArrayLike, price: ArrayLike, size: ArrayLike,
                  side: ArrayLike) -> None:
        """Columnar trades (replay): no Tick objects on the way, and none kept."""
        self._bars(self.candles.on_trades(ts, price, size, side))

    def on_clock(self, now_ms: int) -> None:
        self._bars(self.candles.on_clock(now_ms))

    def on_bars(self, bars: Sequence[Bar]) -> None:
        """Closed bars of the finest timeframe (candle input)."""
        self._bars(self.candles.on_bars(bars))

    def flush(self) -> None:
        self._bars(self.candles.flush())

    def warm(self, history: Mapping[str, Sequence[Bar]]) -> None:
        """Closed bars from the venue's history (oldest first per timeframe), before any live
        trade: they set features and the regime filters up as if they had been seen, and the
        first models train on them."""
        for tf, bars in history.items():
            fe = self.features[tf]
            for bar in bars:
                if fe.last_open_time is not None and bar.open_time <= fe.last_open_time:
                    continue
                self.sink.history_bar(self.market, bar)
                self.last_closed[tf] = bar
                f = fe.on_bar(bar)
                self.last_features[tf] = f
                self.sink.features(self.market, f)
                self.regime.on_features(f, schedule=False)
                self.policy.observe(bar)
                self.event_ms = max(self.event_ms, bar.close_time)
        finest = self.candles.timeframes[0]
        self.candles.seed(history.get(finest, ()))
        self.regime.end_warm_up()
        self._train()
        self._event()

    def resume_ticks(self, ticks: Sequence[Tick]) -> None:
        """Stored trades of the bars a stopped run left open (oldest first, after
        :meth:`warm`): they rebuild those bars as the last run had them. They are stored
        already, so they do not go to the sink; bars they close do, like live ones."""
        self._bars(self.candles.on_ticks(ticks))

    def restore_policy(self, state: PolicyState) -> None:
        """The position, cooldown and last decided bar as the store has them (a restart)."""
        self.policy = DecisionPolicy(self.market.id, self.policy.cfg, state)

    def install(self, result: FitResult, effective_from: int | None = None) -> ModelVersion:
        """A finished fit: in force from the next bar after what has been fed so far (or from
        ``effective_from``, when replaying what a live run did)."""
        mv = self.regime.install(
            result, self.event_ms if effective_from is None else effective_from)
        self.sink.model(self.market, mv)
        track = self.regime.tracks[mv.timeframe]
        if mv.status == "active" and track.version == mv.version and track.pending is None:
            now = self.regime.current(mv.timeframe)  # in force at once: say what it sees
            if now is not None:
                self.sink.regime(self.market, now)
        return mv

    def _train(self) -> None:
        for req in self.regime.training_due():
            self.trainer.request(self, req)

    def _event(self) -> None:
        """Event time moved on: a trainer that replays a live run installs what arrived then."""
        self.trainer.on_event(self)

    def _bars(self, bars: list[Bar]) -> None:
        if not bars:
            return
        closes: dict[int, list[tuple[Bar, Features]]] = {}
        for bar in bars:
            self.sink.bar(self.market, bar)
            fe = self.features[bar.timeframe]
            if bar.revision or (fe.last_open_time is not None
                                and bar.open_time <= fe.last_open_time):
                fe.on_revision(bar)  # a revision, or a bar older than one already seen
                continue
            self.last_closed[bar.timeframe] = bar
            f = fe.on_bar(bar)
            self.last_features[bar.timeframe] = f
            self.sink.features(self.market, f)
            closes.setdefault(bar.close_time, []).append((bar, f))
        for close_time in sorted(closes):
            self._on_close(close_time, closes[close_time])

    def _on_close(self, close_time: int, group: list[tuple[Bar, Features]]) -> None:
        """Every timeframe whose bar closed at ``close_time`` has been fed its features."""
        for _, f in group:
            u = self.regime.on_features(f)
            if u is not None:
                self.sink.regime(self.market, u)
        fused, transition = self.regime.fuse(close_time)
        self.sink.regime(self.market, fused)
        if transition is not None:
            self.sink.transition(self.market, transition)
        for bar, f in group:
            if bar.timeframe == self.policy.timeframe:
                d = self.policy.on_bar(bar, f, fused)
                if d is not None:
                    self.sink.decision(self.market, d)
        self.event_ms = max(self.event_ms, close_time)
        self._train()
        self._event()
