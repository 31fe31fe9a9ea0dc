"""Lightning training of every hopelab variant, with probes that write Parquet at every checkpoint. A whole
run (resolve, resume, train, record) is `hopelab.run.train_one`.

Submodules: module (LitLM), datamodule (step-indexed batches), trainer (Trainer factory, checkpoints),
probes (cms, selfmod, surprise, gradflow callbacks), metrics (train metrics, val loss), bench (probe overhead).
"""
