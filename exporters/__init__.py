"""torch -> ONNX exporters (the only package that imports torch; needs the ``[export]`` extra)."""
