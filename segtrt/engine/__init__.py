"""TensorRT engines: which TensorRT is installed (``flavors``), building plans from ONNX (``build``),
the on-disk engine cache (``cache``) and reading an engine's I/O contract (``inspect``)."""
