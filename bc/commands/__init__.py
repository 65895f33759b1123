"""The commands: one module per entry point, each runnable as ``python -m bc.commands.<name>``.

``scripts/<name>.py`` are the same commands under the names the documentation shows; library
code that starts a command (the pipeline, the drive server launcher) runs the module, so it
never looks for ``scripts/`` by path.
"""
