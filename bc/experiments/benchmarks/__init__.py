"""Benchmarks, one home and one command: `python scripts/benchmark.py NAME [key=value ...]`.

Each NAME has its settings in conf/benchmark/NAME.yaml, whose `_target_` builds the benchmark
here; `run()` measures, prints and returns the numbers (docs/benchmarks.md shows measured ones).

  loader   training-loader samples/s (with augmentation) vs PilotNet training-step samples/s
  sim      rendered camera frames/s on one core and recorded samples/s
  drive    drive-server round trip p50/p99 and replies/s vs the decode+forward floor
  scale    sweep (basic vs joblib launcher), DDP vs 1 process, evaluation serial vs jobs=N
  driving  driving quality: the record -> train -> evaluate pipeline (bc.experiments.pipeline) per seed,
           on the trained track and on unseen ones, summarised over seeds
"""
