"""Stage 1, specs: what to run. TaskSpec (tasks/*.yaml), ModelSpec (models.yaml), RunOptions and
applying them, the catalog of shipped tasks and models, and the registries a spec's names are
checked against."""
