"""Which parts of the model do a task?

tasks.py          prompt pairs (IOI, greater-than, JSONL) and their metrics
patching.py       activation patching: the reference circuit
codes.py          circuit finding from discrete SAE codes of head outputs, scored against patching
results.py        the circuit_runs record of an analysis (its rows: workbench/store/analyses.py)

Attribution graphs, split as circuit-tracer splits them:
replacement.py    the local replacement model: frozen attention and norms, transcoder sets and CLTs, errors
attribute.py      exact edges by batched backward passes; attribution targets
graph.py          the graph as data: influence, pruning (returns what it keeps), scores, greedy paths
export.py         circuit-tracer's graph JSON, feature files, graph-metadata.json; subgraphs with supernodes
interventions.py  changing features in the real model; the graph's predicted changes; faithfulness
deembed.py        de-embeddings
attribution.py    the commands (graph, export, intervene, deembed) and their store I/O
"""
