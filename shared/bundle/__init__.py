"""A model bundle on disk: AutoML's files (model.onnx, labels.json, settings, scoring file, MLmodel), their
task and preprocessing, the manifest a published version carries, and the bundled sample's location.

`layout` is import-light (no numpy) for the cold start's download; `loader` reads a whole bundle."""
