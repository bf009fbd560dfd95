"""Stage 6, results: the RunResult schema (every field described; docs/result.schema.json is
generated from it) and the atomic store of one JSON per (model, task) unit."""
