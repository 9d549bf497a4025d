"""The space file and the run's options: vocabulary, reading and ``--set``, validation, the validated space.

Imports neither torch nor transformers: a space can be checked on a machine with only the CLI installed.
"""
