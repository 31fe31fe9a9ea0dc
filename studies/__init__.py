"""Built-in study definitions, one small file per study, each defining `STUDY = Study(...)`.

`hopelab study list` shows them; `hopelab study NAME --scale S` runs one. Copy a file to start your own
and run it with `hopelab study run my_study.py`.
"""
