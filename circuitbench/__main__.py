"""`python -m circuitbench` = the `circuitbench` command."""
from circuitbench.cli import main

main()
