"""opdkit lab: the paper's mechanisms reproduced cheaply on a CPU."""
