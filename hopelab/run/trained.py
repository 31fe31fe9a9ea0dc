"""A trained model back from one of a run's checkpoints: every checkpoint holds the run's config.json, so a
checkpoint alone rebuilds the model it saved.

    trained = load_trained(RunDir("runs/ablation/tiny/hope/seed0"))          # the last kept checkpoint
    trained.model, trained.step, trained.labels                              # eval-ready model, its step, row labels
    data = trained.data()                                                    # the run's prepared corpus
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from hopelab.config import ModelConfig, TrainConfig
from hopelab.errors import UserError
from hopelab.run.rundir import RunDir
from hopelab.run.spec import RunSpec, resolve_configs


@dataclass
class TrainedModel:
    model: nn.Module
    step: int
    spec: RunSpec
    train: TrainConfig
    config: dict[str, Any]  # the run's config.json as the checkpoint holds it
    run_dir: RunDir

    @property
    def labels(self):
        """The identity columns of the rows written about this run (hopelab.probes.RunLabels)."""
        from hopelab.probes import RunLabels

        s, cfg = self.spec, self.model.config
        return RunLabels(s.run_id, s.study, s.variant, s.scale, s.seed, self.train.batch_size * cfg.context_len)

    def data(self, cache_dir: str | None = None, progress: bool = False):
        """The run's prepared corpus (from the data cache; built again if it is not there)."""
        from hopelab.data import prepare

        requested, _ = resolve_configs(self.spec)  # the vocabulary asked for, before the data fixed it
        return prepare(corpus=self.spec.data, tokenizer=requested.tokenizer, vocab_size=requested.vocab_size,
                       cache_dir=cache_dir, progress=progress)


def load_trained(run_dir: RunDir, step: int | None = None) -> TrainedModel:
    """The model of `run_dir`'s checkpoint at `step` (None: the last kept one), in eval mode on CPU."""
    from hopelab.lit.trainer import load_checkpoint
    from hopelab.models import build_model

    kept = dict(run_dir.list_checkpoints())
    if not kept:
        raise UserError(f"{run_dir.path} has no checkpoint")
    if step is None:
        step = max(kept)
    if step not in kept:
        raise UserError(f"{run_dir.path} keeps checkpoints of steps {', '.join(map(str, sorted(kept)))} only, "
                        f"not {step}")
    try:
        ckpt = load_checkpoint(kept[step])
    except Exception as err:  # noqa: BLE001 - any failure to load: not a usable checkpoint
        raise UserError(f"checkpoint {kept[step]} cannot be loaded: {err}") from None
    config = ckpt["hopelab"]["config"]
    known = {f.name for f in dataclasses.fields(RunSpec)}
    spec = RunSpec(**{k: v for k, v in config["spec"].items() if k in known})
    model_cfg = ModelConfig(**config["model"])  # resolved: the variant's switches applied, the width solved
    # a matched Transformer's stored config already has its solved width: build it as it is
    model = build_model("transformer" if spec.variant == "transformer_matched" else spec.variant, model_cfg)
    model.variant = spec.variant
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # written by a version of hopelab whose model differs
        first = str(err).strip().splitlines()[0]
        raise UserError(f"checkpoint {kept[step]} does not fit this version's {spec.variant} model: {first} "
                        f"(missing or unexpected parameters)") from None
    train = TrainConfig(**{**config["train"], "betas": tuple(config["train"]["betas"])})
    return TrainedModel(model.eval(), step, spec, train, config, run_dir)
