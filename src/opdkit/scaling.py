"""`python -m opdkit.scaling`: the documented command for the paper memory/time model.

The code lives in `opdkit.scale.scaling`; this name is kept so README and docs/scaling.md commands work.
"""
from opdkit.scale.scaling import main

if __name__ == "__main__":
    main()
