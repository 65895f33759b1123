"""bc.sim: the built-in headless simulator, a stand-in for the Udacity Unity simulator.

Modules (import what you need; this package imports nothing by itself so that
`bc.sim.car` stays cheap):

* `track`    tracks as YAML data: spline centreline, validation, nearest-point lookup
* `car`      kinematic bicycle model with the Unity car's control ranges
* `camera`   vectorised numpy dashcam renderer (the Udacity cameras and frame size, RGB)
* `expert`   pure-pursuit expert driver and DART-style action noise
* `recorder` training-mode recording in the Unity `driving_log.csv` + `IMG/` format
* `autonomous`, `metrics`, `plots`  the client side of a drive server and its evaluation

Simulator facts (file names, cameras, frame size, rate, protocol) come from `bc.udacity`;
its speed benchmark is `python scripts/benchmark.py sim` (bc/benchmarks/sim.py).
"""
