"""Codebook features (Tamkin, Taufeeque & Goodman): discrete codes at sublayer outputs.

    attach.py     codebook bottlenecks at a HF model's sublayer outputs (per head at attn.hook_z); forcing codes
    finetune.py   fine-tuning with the bottlenecks in place; checkpoints, exact resume, saved codebooks
    train.py      `workbench codebook train` and `encode`: corpus, store rows, the LM loss before and after
    steer.py      generation with codes forced on, and how often the target behaviour appears
    browse.py     reading stored codes back (the app's Codes page)
    fsm.py        TokFSM: a digit-token finite-state machine with per-token true states; a small model for it
    fsm_eval.py   purity and interventions against TokFSM's ground truth
The bottleneck itself is workbench/dictionaries/codebook.py.
"""
