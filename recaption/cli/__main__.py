"""`python -m recaption.cli ...`."""
from recaption.cli import main

main()
