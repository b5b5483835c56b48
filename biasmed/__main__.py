"""`python -m biasmed` runs the CLI."""

from biasmed.cli import main

main()
