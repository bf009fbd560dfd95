"""The side lab: training toy models (trainer.py), the shipped zoo's recipes (zoo.py), noise
injection while training, and training dynamics across checkpoints. It uses the benchmark flow;
nothing in the flow uses it."""
