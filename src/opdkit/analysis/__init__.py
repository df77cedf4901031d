"""Looking at runs and pairs: probes before training, the HTML report, plots.
"""
