"""The commands: one module per entry point, each runnable as ``python -m bc.commands.<name>``.

``scripts/<name>.py`` are the same commands under the names the documentation shows; library
code that starts a command (the pipeline, the drive server launcher) runs the module, so it
never looks for ``scripts/`` by path. A command imports the rest of bc inside ``main``, once
its configuration has composed (deliberately lazy): a bad command line is answered before
torch, Lightning or MLflow load.
"""
