"""Which parts of the model do a task?

tasks.py        prompt pairs (IOI, greater-than, JSONL) and their metrics
patching.py     activation patching: the reference circuit
codes.py        circuit finding from discrete SAE codes of head outputs, scored against patching
attribution.py  attribution graphs through transcoders, their JSON export, de-embeddings
results.py      the circuit_runs record of an analysis (its rows: workbench/store/analyses.py)
"""
