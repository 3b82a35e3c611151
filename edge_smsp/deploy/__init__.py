"""Deploying to a device: device check -> plan -> adapt -> export -> upload -> bench -> report.

steps.py        the deploy stages, each a typed function (check, plan, adapt, export, ship, bench)
session.py      the run that chains them, cancellation, the report's timings
bench.py        benchmarking an ONNX file on a device
calibration.py  measuring a few ratios up front (--calibrate)
report.py       the deploy report (JSON)
"""
