"""Depth-usage probes (Csordás, Manning, Potts 2025): how much does each layer contribute?

sublayer.py     norm ratios and cosines of attention/MLP outputs against the residual
skipping.py     skip a layer before position t, measure later layers' updates and the output
logit_lens.py   final norm + unembedding on every layer's residual: KL and top-5 overlap
linear_maps.py  linear maps from each layer of one model to each layer of another
depth.py        runs the first three over a corpus, sharing one clean pass per batch
results.py      ProbeResult, storing a probe run (through workbench/store/analyses.py); depth scores
"""
