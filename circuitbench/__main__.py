"""`python -m circuitbench`: what launchers run (`torchrun … -m circuitbench run …`)."""
from circuitbench.cli import main

main()
