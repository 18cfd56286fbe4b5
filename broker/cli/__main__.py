"""`python -m broker.cli`: the `broker` command without its console script."""

from broker.cli import main

main()
