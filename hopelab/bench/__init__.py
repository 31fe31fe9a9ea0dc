"""`hopelab bench`: speed and memory of every variant, measured in one run.

    timing          a training step per variant, chunked vs reference, the auditor's wall time
    probe_overhead  the same short training with probes on and off (imported when asked for: it needs Lightning)
    suite           run_bench: every measurement, as rows
    report          the rows as bench-<scale>.parquet and README-<scale>.md

Measured numbers live in reports/bench/README-<scale>.md.
"""

from hopelab.bench.report import BENCH_COLUMNS, write_bench_report
from hopelab.bench.suite import run_bench
from hopelab.bench.timing import COMPILED, CUDAGRAPHS, RECOMPUTED, count_saved_activations

__all__ = [
    "BENCH_COLUMNS", "COMPILED", "CUDAGRAPHS", "RECOMPUTED", "count_saved_activations", "run_bench",
    "write_bench_report",
]
