"""Stage 5, circuits: the Circuit type (no torch: pure set and rank maths), faithfulness (runs the
model through the intervention engine), and overlap between circuits."""
