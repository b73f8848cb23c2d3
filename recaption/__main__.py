"""`python -m recaption ...`: the `recaption` console script, for an environment without its
entry point on PATH (a `pip install --target` folder, a wheel added to `sys.path`)."""
from recaption.cli import main

if __name__ == "__main__":
    main()
