"""`python -m charter` is the `charter` command."""

from charter.cli import main

main()
