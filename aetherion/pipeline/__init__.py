"""The wiring of the stages: what runs per market, live and in replay.

- :mod:`~aetherion.pipeline.stages` — the synchronous chain of one market (candles → features →
  regime → decision), no I/O, and :func:`build_pipeline`, the one way to put it together;
- :mod:`~aetherion.pipeline.sinks` — where its events go (stores, metrics, a list, a fan-out);
- :mod:`~aetherion.pipeline.trainer` — who fits the regime models (at once, or in a worker);
- :mod:`~aetherion.pipeline.live` — one market live: connector → queue → pipeline, and a clock;
- :mod:`~aetherion.pipeline.startup` — restore models, position and price; warm up; record the run;
- :mod:`~aetherion.pipeline.checks` — what is checked before start;
- :mod:`~aetherion.pipeline.replay` — a replay of a file or of a stored live run;
- :mod:`~aetherion.pipeline.runtime` — the live process: start and stop everything in order.

This package imports no API module: events leave through sinks; the API injects its publisher.
"""

from aetherion.pipeline.checks import market_source, preflight
from aetherion.pipeline.live import LiveMarket, MarketView
from aetherion.pipeline.runtime import Publisher, Runtime
from aetherion.pipeline.sinks import Fanout, ListSink, MetricsSink, NullSink, Sink, StoreSink
from aetherion.pipeline.stages import MarketPipeline, StageConfig, build_pipeline
from aetherion.pipeline.trainer import InlineTrainer, Trainer, WorkerTrainer

__all__ = [
    "Fanout", "InlineTrainer", "ListSink", "LiveMarket", "MarketPipeline", "MarketView",
    "MetricsSink", "NullSink", "Publisher", "Runtime", "Sink", "StageConfig", "StoreSink",
    "Trainer", "WorkerTrainer", "build_pipeline", "market_source", "preflight",
]
