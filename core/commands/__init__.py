"""`python -m core COMMAND`: the command-line code, one module per command group, over the engine modules."""
