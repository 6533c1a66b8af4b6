"""The benchmark: this stack beside in-process ONNX Runtime, uWSGI alone, gunicorn and uvicorn (issue 7).

``make bench`` (or ``python -m bench``) runs it and writes reports/bench-<timestamp>/.
"""
