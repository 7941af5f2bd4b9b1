"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in every template image).

The launcher runs this file with the job's parameters as `--name=value`
arguments; it behaves exactly like `python -m pipelines.$TALLYFLOW_PIPELINE`
(the image sets TALLYFLOW_PIPELINE). A file of its own, not the pipeline
module itself: run as a script, `pipelines/streaming_usage.py` would put
`pipelines/` first on sys.path, where `common.py` or `publish.py` could shadow
installed modules of the same name.
"""
import os
import runpy

runpy.run_module(f"pipelines.{os.environ['TALLYFLOW_PIPELINE']}", run_name="__main__",
                 alter_sys=True)
