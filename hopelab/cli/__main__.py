"""`python -m hopelab.cli ...` is `hopelab ...`."""

from hopelab.cli import main

main()
