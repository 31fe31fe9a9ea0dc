"""Studies: typed definitions (variants x scales x seeds x overrides) and the runner behind `hopelab study`.

    from hopelab.study import Study, Cell
    STUDY = Study(name="mine", description="...", cells=[Cell("hope"), Cell("titans")], seeds=2)

    loaded = load_study("ablation")                     # or a path to a file defining STUDY
    runs = plan_runs(loaded.study, scales=["tiny"])     # one PlannedRun (with its RunSpec) per run
    runs[0].dir.state()                                 # where it stands on disk (a hopelab.run.RunState)
"""

from hopelab.config import parse_set_options, split_overrides
from hopelab.study.definition import Cell, Study
from hopelab.study.loader import LoadedStudy, builtin_names, load_study
from hopelab.study.plan import PlannedRun, parse_shard, plan_runs, shard_runs
from hopelab.study.study_json import STUDY_JSON, read_study_json, study_root

__all__ = [
    "Cell",
    "Study",
    "LoadedStudy",
    "PlannedRun",
    "STUDY_JSON",
    "builtin_names",
    "load_study",
    "parse_set_options",
    "parse_shard",
    "plan_runs",
    "read_study_json",
    "shard_runs",
    "split_overrides",
    "study_root",
]
