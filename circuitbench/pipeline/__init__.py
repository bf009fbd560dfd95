"""Stage 7, pipeline: one (model, task) unit through every stage into a RunResult (unit.py), and
the task × model grid with resume and failed units recorded (grid.py)."""
