"""bc.evaluation: driving the built-in simulator and measuring it.

* `episodes`  the one episode loop: N `bc/Drive-v0` episodes through Gymnasium's vector API
              (Sync/AsyncVectorEnv, autoreset), a policy and a per-step callback
* `policies`  who drives: a model batched as drive.py answers, the expert, DAgger's mixture
* `expert`    the expert's reference drive (pace, |CTE| to compare with)
* `metrics`   an episode's record (`DriveResult`) and its metrics, tables, JSON, MLflow
* `score`     the closed-loop score (eval/score) over a set of tracks, vectorised

bc.sim holds the world these drive in (env, car, camera, track, expert).
"""
