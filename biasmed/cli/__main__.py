"""`python -m biasmed.cli` runs the CLI too."""

from biasmed.cli import main

main()
