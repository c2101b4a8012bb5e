"""Label-noise-robust training for medical image classifiers (ROP first).

Public entry points live in submodules: `engine.data` (dataset contract, ingest, aggregation, split),
`engine.methods` (the method registry), `engine.pipeline` (a full run), `engine.export` (cleaned labels).
"""

__version__ = "0.1.0"
