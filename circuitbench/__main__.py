"""`python -m circuitbench`: the same entry point as the `circuitbench` command."""
from circuitbench.cli import main

main()
