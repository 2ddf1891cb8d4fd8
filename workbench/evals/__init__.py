"""Evaluations beyond the core metrics (evaluate.py), each a command with its store I/O:

suite            `workbench eval`: the chosen benchmarks on a dictionary and its seed siblings, then the table
absorption       first-letter feature absorption (Chanin et al., SAEBench's variant)
sparse_probing   top-k feature probes against a dense probe (Gao et al., as SAEBench runs it)
probing_tasks    the labelled tasks sparse probing reads, built from text that ships with Python
probes           the logistic probes both fit
autointerp       explain features with an LLM and score the explanations (delphi's detection and fuzzing)
llm              the explainer/scorer LLMs: a local HF causal LM, or an OpenAI-compatible endpoint
llm_server       a local LM behind OpenAI's chat-completions API on localhost (the endpoint tests use it)
steering         steer and ablate with a dictionary's features, its error term kept (as Neuronpedia does)
seeds            sibling dictionaries trained with other seeds, for the seed bands
table            every dictionary's scores side by side, with bands over seeds
neuronpedia      export a dictionary in Neuronpedia's upload format
common           a dictionary loaded beside its model, activations at its hook, writing dictionary_scores
"""
