"""bc.sim: the built-in headless simulator, a stand-in for the Udacity Unity simulator.

Modules (importing the package registers the Gymnasium id `bc/Drive-v0` and nothing else, so
that `bc.sim.car` stays cheap):

* `env`      DrivingEnv, the one simulator step (Gymnasium API): car, cameras, progress,
             laps, the off-road rule and interventions; everything below loops over it
* `track`    tracks as YAML data: spline centreline, validation, nearest-point lookup
* `car`      the car models: tyre-limited dynamic bicycle (default) and kinematic
* `camera`   vectorised numpy dashcam renderer (the Udacity cameras and frame size, RGB)
* `expert`   pure-pursuit expert driver and DART-style action noise
* `recorder` training-mode recording in the Unity `driving_log.csv` + `IMG/` format
* `unity_client`  the Unity simulator's side of the drive-server protocol (websocket)
* `plots`    trajectory pictures and videos

The episode loop that drives this world, and what it measures, is bc.evaluation.

Simulator facts (file names, cameras, frame size, rate, protocol) come from `bc.core.udacity`;
its speed benchmark is `python scripts/benchmark.py sim` (bc/experiments/benchmarks/sim.py).
"""

import gymnasium

ENV_ID = "bc/Drive-v0"  # gymnasium.make(ENV_ID, track="lake", ...): bc.sim.env.DrivingEnv

if ENV_ID not in gymnasium.registry:
    # the time limit: bc.sim.env.MAX_EPISODE_STEPS (not imported here: `bc.sim.car` stays cheap)
    gymnasium.register(id=ENV_ID, entry_point="bc.sim.env:DrivingEnv", max_episode_steps=27000)
