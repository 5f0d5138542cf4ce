"""rrs: reproducible companion to the RRS paper (EMNLP 2025).

One module per stage: data, audio (speech synthesis and checks), modes (the three input
modes), models (adapters), representations, features, training, evaluation, plots, tables.
"""
__version__ = "0.1.0"
