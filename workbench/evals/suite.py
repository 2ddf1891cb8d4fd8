"""`workbench eval`: the chosen benchmarks on a dictionary (and its seed siblings), then every dictionary's scores."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.errors import EvaluationError
from workbench.evals.absorption import AbsorptionConfig, run_absorption
from workbench.evals.seeds import train_siblings
from workbench.evals.sparse_probing import ProbingConfig, run_sparse_probing
from workbench.evals.table import DictionaryScores, score_table
from workbench.evaluate import EvalConfig, run_eval
from workbench.store import Store
from workbench.store.records import DictionaryEvalRecord

BENCHMARKS = ("core", "absorption", "sparse_probing")


@dataclass
class EvalSuiteConfig(EvalConfig):
    benchmarks: list[str] = field(default_factory=lambda: ["core"])
    """Benchmarks to run, comma-separated: core (FVU, L0, dead, CE score, KL), absorption, sparse_probing, or all.
    Each with its defaults; `workbench absorption` and `workbench sparse-probing` take their own options."""
    seeds: int = 1
    """Evaluate the dictionary and N - 1 siblings trained as it was with seeds + 1 ... + N-1 (named NAME-seed1, ...;
    trained when missing, resumed when cut short), and report each metric as mean ± std over the N."""

    def __post_init__(self) -> None:
        if self.benchmarks == ["all"]:
            self.benchmarks = list(BENCHMARKS)
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise EvaluationError(
                f"Unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)} or all."
            )
        if self.seeds < 1:
            raise EvaluationError("--seeds must be at least 1.")


@dataclass
class EvalSuiteResult:
    members: list[str]
    """The dictionary and its seed siblings that were evaluated."""
    evaluations: list[DictionaryEvalRecord]
    """The core metrics of each member, when core ran."""
    table: list[DictionaryScores]
    """Every dictionary in the store, side by side."""


def run_eval_suite(config: EvalSuiteConfig, *, progress: bool = True) -> EvalSuiteResult:
    store = Store.open_existing(config.store)
    members = train_siblings(store, config.dictionary, config.seeds, progress=progress)
    device, dtype, backend = config.device, config.dtype, config.backend
    evaluations = []
    for member in members:
        if "core" in config.benchmarks:
            core = EvalConfig(store=config.store, dictionary=member, run=config.run, ce_tokens=config.ce_tokens,
                              batch_size=config.batch_size, device=device, dtype=dtype, backend=backend)  # fmt: skip
            evaluations.append(run_eval(core).evaluation)
        if "absorption" in config.benchmarks:
            run_absorption(
                AbsorptionConfig(config.store, member, device=device, dtype=dtype, backend=backend), progress=progress
            )
        if "sparse_probing" in config.benchmarks:
            probing = ProbingConfig(config.store, member, device=device, dtype=dtype, backend=backend)
            run_sparse_probing(probing, progress=progress)
    return EvalSuiteResult(members, evaluations, score_table(store))
